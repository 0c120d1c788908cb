"""The fleet's rollout state (SPEC 3.3 fleet-status, rollout gate) from plain series: joining
series to devices (scraped and pushed), each device's state per app, stale and never-seen
devices, waves, and the failure threshold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler import model
from reconciler.core import fleet_status, release, rollout
from reconciler.core.fleet_status import Observed, Series, Threshold

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)
NEW = "b" * 64
OLD = "a" * 64
GW = "apps/gw/app.yaml"
POLL = 60.0


EVERY_DEVICE = model.Selector()


def manifest(name="gw", *, waves=(), selector=EVERY_DEVICE):
    return model.AppManifest(
        name=name,
        path=f"apps/{name}/app.yaml",
        revision=NEW,
        selector=selector,
        containers=(),
        waves=tuple(waves),
    )


def the_release(**pin):
    return release.Release(
        version=7,
        created=SINCE,
        expires=NOW + timedelta(days=30),
        source_commit="c" * 40,
        apps=((GW, release.AppPin(sha256=NEW, since=SINCE, **pin)),),
    )


def scraped(device, *apps, fetched=NOW, instance=None):
    """The series one scraped device has: target labels job/instance, no device label except
    on device_info. `apps` are (revision, state) pairs for gw."""
    target = {"job": "devices", "instance": instance or f"{device}:9100"}
    return {
        "device_info": [Series({**target, "device": device}, 1)],
        "last_fetch": [Series(target, fetched.timestamp())],
        "app_info": [
            Series({**target, "app": "gw", "revision": rev, "state": st}, 1) for rev, st in apps
        ],
    }


def pushed(device, *apps, fetched=NOW):
    """The series one device pushed to a Pushgateway: every series carries `device`."""
    group = {"job": "reconciler", "instance": "", "device": device}
    return {
        "device_info": [Series(group, 1)],
        "last_fetch": [Series(group, fetched.timestamp())],
        "app_info": [
            Series({**group, "app": "gw", "revision": rev, "state": st}, 1) for rev, st in apps
        ],
    }


def observed(*devices, gone=(), **extra):
    merged = {"device_info": [], "last_fetch": [], "app_info": []}
    for d in devices:
        for key, value in d.items():
            merged[key] += value
    seen = list(merged["device_info"])
    for d in gone:  # devices that stopped reporting: known from the look-back range only
        seen += d["device_info"]
        merged["last_fetch"] += d["last_fetch"]
    return Observed(
        device_info_now=merged["device_info"],
        device_info_seen=seen,
        last_fetch=merged["last_fetch"],
        app_info=merged["app_info"],
        **extra,
    )


def compute(obs, *, the=None, manifests=None, devices=None, threshold=None):
    return fleet_status.compute(
        current=the or the_release(),
        manifests=manifests if manifests is not None else [manifest()],
        observed=obs,
        now=NOW,
        poll_interval=POLL,
        devices=devices,
        threshold=threshold,
    )


def states(status):
    (app,) = status.apps
    return {row.device: row.state for row in app.devices}


def test_each_reported_combination_maps_to_one_state():
    status = compute(
        observed(
            scraped("d-applied", (NEW, "running")),
            scraped("d-held", (OLD, "running"), (NEW, "held_back")),
            scraped("d-failed", (NEW, "failed")),
            scraped("d-paused", (OLD, "paused")),
            scraped("d-pending", (OLD, "running"), (NEW, "pending")),
            scraped("d-older", (OLD, "running")),
            scraped("d-other-app"),
        ),
        devices={"d-missing": {}},
    )
    assert states(status) == {
        "d-applied": "applied",
        "d-held": "failed",
        "d-failed": "failed",
        "d-paused": "paused",
        "d-pending": "pending",
        "d-older": "older",
        "d-missing": "never_seen",
    }
    (app,) = status.apps
    assert (app.tried, app.failed) == (3, 2)
    assert {s: app.count(s) for s in fleet_status.DEVICE_STATES} == {
        "applied": 1,
        "pending": 1,
        "paused": 1,
        "failed": 2,
        "older": 1,
        "missing": 0,
        "never_seen": 1,
    }
    assert app.targeted == 7
    assert status.never_seen == ("d-missing",)


def test_a_failure_of_an_older_revision_does_not_count_against_the_newest():
    status = compute(observed(scraped("d1", (NEW, "running"), (OLD, "held_back"))))
    (app,) = status.apps
    assert states(status) == {"d1": "applied"}
    assert (app.tried, app.failed) == (1, 0)


def test_pushed_series_join_by_their_device_label():
    status = compute(observed(pushed("p1", (NEW, "running")), pushed("p2", (NEW, "held_back"))))
    assert states(status) == {"p1": "applied", "p2": "failed"}
    assert not status.stale_devices


def test_scraped_series_join_by_their_target_not_by_position():
    a = scraped("alpha", (NEW, "running"), instance="10.0.0.1:9100")
    b = scraped("beta", (NEW, "failed"), instance="10.0.0.2:9100")
    status = compute(observed(b, a))
    assert states(status) == {"alpha": "applied", "beta": "failed"}


def test_scraped_and_pushed_devices_mix():
    status = compute(observed(scraped("s", (NEW, "running")), pushed("p", (OLD, "paused"))))
    assert states(status) == {"s": "applied", "p": "paused"}


def test_a_series_of_an_unknown_target_is_ignored():
    stray = Series(
        {"job": "x", "instance": "y", "app": "gw", "revision": NEW, "state": "running"}, 1
    )
    obs = observed(scraped("d1", (NEW, "running")))
    obs = Observed(**{**obs.__dict__, "app_info": [*obs.app_info, stray]})
    assert states(compute(obs)) == {"d1": "applied"}


def test_stale_devices_no_fetch_for_three_polls_or_no_longer_reporting():
    status = compute(
        observed(
            scraped("fresh", (NEW, "running"), fetched=NOW - timedelta(seconds=3 * POLL)),
            scraped("late", (NEW, "running"), fetched=NOW - timedelta(seconds=3 * POLL + 1)),
            gone=[scraped("gone", (NEW, "running"))],
        )
    )
    assert status.stale_devices == ("gone", "late")
    (app,) = status.apps
    # A stale device keeps its last reported state and is counted stale too; one that no longer
    # reports has no current series: it is known, but not targeted without an inventory.
    assert states(status) == {"fresh": "applied", "late": "applied"}
    assert app.stale == 1


def test_a_device_that_stopped_reporting_keeps_the_state_it_was_last_seen_in():
    gone = scraped("gone", (OLD, "running"), fetched=NOW - timedelta(hours=1))
    target = gone["app_info"][0].labels
    last_seen = [  # it ran OLD, then paused: the later series is its last state
        Series(target, (NOW - timedelta(hours=2)).timestamp()),
        Series(
            {**target, "revision": NEW, "state": "paused"}, (NOW - timedelta(hours=1)).timestamp()
        ),
    ]
    status = compute(
        observed(scraped("here", (NEW, "running")), gone=[gone], app_info_last=last_seen)
    )
    assert status.stale_devices == ("gone",)
    assert states(status) == {"here": "applied", "gone": "paused"}
    # A device still reporting is judged by what it reports now, never by what it was.
    status = compute(
        observed(
            scraped("here", (NEW, "running")),
            app_info_last=[
                Series(
                    {
                        **scraped("here")["device_info"][0].labels,
                        "app": "gw",
                        "revision": OLD,
                        "state": "failed",
                    },
                    NOW.timestamp(),
                )
            ],
        )
    )
    assert states(status) == {"here": "applied"}


def test_a_device_that_never_fetched_is_stale():
    device = scraped("d1", (NEW, "running"))
    device["last_fetch"] = []
    assert compute(observed(device)).stale_devices == ("d1",)


def test_with_an_inventory_the_selector_decides_targets_and_absent_devices_are_never_seen():
    selector = model.Selector(match_labels=(("role", "gateway"),))
    inventory = {"gw-1": {"role": "gateway"}, "gw-2": {"role": "gateway"}, "k-1": {"role": "kiosk"}}
    status = compute(
        observed(scraped("gw-1", (NEW, "running")), scraped("k-1")),
        manifests=[manifest(selector=selector)],
        devices=inventory,
    )
    assert states(status) == {"gw-1": "applied", "gw-2": "never_seen"}
    assert status.never_seen == ("gw-2",)


def test_a_targeted_device_reporting_nothing_for_the_app_is_missing():
    status = compute(observed(scraped("d1")), devices={"d1": {}})
    assert states(status) == {"d1": "missing"}


def test_pending_says_why_hold_then_wave_then_window():
    waves = [model.Wave(percent=50, after=0), model.Wave(percent=100, after=86400)]
    names = [f"d{i}" for i in range(40)]
    in_wave = [n for n in names if rollout.bucket(n, "gw") < 50]
    out_wave = [n for n in names if rollout.bucket(n, "gw") >= 50]
    devices = [
        scraped(in_wave[0], (OLD, "running"), (NEW, "pending")),
        scraped(in_wave[1], (OLD, "running"), (NEW, "pending")),
        scraped(in_wave[2], (OLD, "running"), (NEW, "pending")),
        scraped(out_wave[0], (OLD, "running"), (NEW, "pending")),
    ]
    target = {"job": "devices"}
    hold = [Series({**target, "instance": f"{in_wave[0]}:9100"}, 1)]
    window = [
        Series({**target, "instance": f"{in_wave[1]}:9100"}, 0),
        Series({**target, "instance": f"{in_wave[2]}:9100"}, 1),
    ]
    status = compute(
        observed(*devices, hold=hold, in_window=window), manifests=[manifest(waves=waves)]
    )
    (app,) = status.apps
    reasons = {row.device: row.reason for row in app.devices}
    assert reasons == {
        in_wave[0]: "hold",
        in_wave[1]: "window",
        in_wave[2]: "",
        out_wave[0]: "wave",
    }
    assert app.pending_reasons() == {"hold": 1, "unknown": 1, "wave": 1, "window": 1}
    assert app.open_percent == 50
    assert app.wave == "wave 1 of 2 (50%)"
    assert app.next_wave == SINCE + timedelta(days=1)
    assert status.devices[in_wave[0]].hold is True


@pytest.mark.parametrize(
    ("waves", "text", "percent"),
    [
        ((), "no waves (100%)", 100),
        ([model.Wave(percent=100, after=7200)], "no wave open yet (0 of 1)", 0),
        (
            [model.Wave(percent=10, after=0), model.Wave(percent=100, after=3600)],
            "wave 2 of 2 (100%)",
            100,
        ),
    ],
)
def test_the_wave_open_now(waves, text, percent):
    (app,) = compute(observed(), manifests=[manifest(waves=waves)]).apps
    assert (app.wave, app.open_percent) == (text, percent)


def test_paused_and_abort_come_from_the_release_and_aborted_devices_are_counted():
    the = the_release(paused=True, abort=OLD)
    status = compute(
        observed(scraped("d1", (OLD, "running")), scraped("d2", (NEW, "running"))), the=the
    )
    (app,) = status.apps
    assert app.paused and app.abort == OLD
    assert app.still_aborted == 1


def test_a_pin_without_its_manifest_is_shown_by_path():
    (app,) = compute(observed(), manifests=[]).apps
    assert app.name == GW and app.wave == "no waves (100%)"


def test_applied_release_and_commit_per_device():
    applied = [Series({"job": "devices", "instance": "d1:9100", "release": "7", "commit": "c"}, 1)]
    status = compute(observed(scraped("d1", (NEW, "running")), applied_info=applied))
    assert (status.devices["d1"].applied_release, status.devices["d1"].applied_commit) == ("7", "c")


@pytest.mark.parametrize(
    ("text", "failed", "tried", "exceeded"),
    [
        ("0", 0, 5, False),
        ("0", 1, 5, True),
        ("2", 2, 2, False),
        ("2", 3, 10, True),
        ("50%", 1, 2, False),
        ("50%", 2, 3, True),
        ("0%", 1, 100, True),
        ("100%", 5, 5, False),
        ("10%", 0, 0, False),
        ("12.5%", 1, 8, False),
        ("12.5%", 2, 8, True),
    ],
)
def test_thresholds(text, failed, tried, exceeded):
    assert fleet_status.parse_threshold(text).exceeded(failed, tried) is exceeded


@pytest.mark.parametrize("text", ["", "-1", "1.5", "101%", "ten", "5 %%", "%"])
def test_bad_thresholds_are_refused(text):
    with pytest.raises(ValueError, match=r"expected|must be"):
        fleet_status.parse_threshold(text)


def test_over_limit_uses_the_threshold():
    obs = observed(scraped("d1", (NEW, "held_back")), scraped("d2", (NEW, "running")))
    assert compute(obs, threshold=Threshold(count=1)).over_limit == ()
    assert [a.name for a in compute(obs, threshold=Threshold(count=0)).over_limit] == ["gw"]
    assert [a.name for a in compute(obs, threshold=Threshold(percent=49)).over_limit] == ["gw"]
    assert compute(obs).over_limit == ()


def test_the_queries_read_exactly_the_spec_metrics():
    text = " ".join(fleet_status.queries("1d").values())
    for name in (
        "reconciler_device_info",
        "reconciler_app_info",
        "reconciler_hold",
        "reconciler_in_maintenance_window",
        "reconciler_last_fetch_success_timestamp_seconds",
        "reconciler_applied_info",
    ):
        assert name in text
    # Every field but the last states of silent devices (their own range queries) has a query.
    assert set(fleet_status.queries("1d")) == set(Observed.__dataclass_fields__) - {"app_info_last"}


def test_a_state_the_spec_does_not_name_is_not_guessed_at():
    device = scraped("d1", (NEW, "upgrading"))
    status = compute(observed(device), devices={"d1": {}})
    assert states(status) == {"d1": "missing"}


def test_only_scraped_devices_that_stopped_reporting_have_their_last_states_looked_up():
    gone = scraped("gone", (NEW, "running"), instance='odd"host\\:9100')
    obs = observed(
        scraped("here", (NEW, "running")),
        pushed("pushed", (NEW, "running")),
        gone=[gone, pushed("pushed-gone")],
    )
    # A pushed device has no target of its own: its gateway still serves what it pushed last.
    assert fleet_status.silent_selectors(obs, "1d") == [
        'reconciler_app_info{job="devices",instance="odd\\"host\\\\:9100"}[1d]'
    ]


def test_the_last_state_lookups_are_capped():
    many = [scraped(f"d{n:04}") for n in range(fleet_status.MAX_SILENT_LOOKUPS + 5)]
    selectors = fleet_status.silent_selectors(observed(gone=many), "2h")
    assert len(selectors) == fleet_status.MAX_SILENT_LOOKUPS
    assert all(s.endswith("[2h]") for s in selectors)
