"""rollout: stable buckets and wave decisions, at the edges of each wave."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import model
from reconciler.core import rollout

SINCE = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
HOUR = 3600.0
US = timedelta(microseconds=1)
# SPEC 2.1's example: 10% at once, 50% after 6h, everyone after 24h.
SPEC_WAVES = (
    model.Wave(percent=10),
    model.Wave(percent=50, after=6 * HOUR),
    model.Wave(percent=100, after=24 * HOUR),
)

# Computed once with `hashlib.sha256(f"{device}/{app}".encode()).hexdigest()[:8]` (and checked
# against `printf %s gw-berlin-01/sensor-gateway | sha256sum`), then frozen: a change here
# would silently move devices between waves across a fleet.
KNOWN_BUCKETS = [
    ("gw-berlin-01", "sensor-gateway", "5aa65534", 28),
    ("gw-berlin-01", "web", "75bae040", 76),
    ("gw-berlin-02", "sensor-gateway", "b9ee45b1", 69),
    ("gw-paris-01", "web", "f768898b", 7),
    ("kiosk-7", "web", "84abb954", 12),
    ("pi-0005", "web", "d647c23b", 3),
]
DEVICE, APP = "gw-berlin-01", "sensor-gateway"  # bucket 28: out of wave 1, in wave 2


def decide(waves, *, now, device=DEVICE, app=APP, since=SINCE):
    return rollout.decide(waves, device_name=device, app_name=app, since=since, now=now)


@pytest.mark.parametrize(("device", "app", "prefix", "expected"), KNOWN_BUCKETS)
def test_bucket_matches_the_known_vectors(device, app, prefix, expected):
    assert hashlib.sha256(f"{device}/{app}".encode()).hexdigest()[:8] == prefix
    assert int(prefix, 16) % 100 == expected
    assert rollout.bucket(device, app) == expected


def test_bucket_depends_on_the_app_as_well_as_the_device():
    assert rollout.bucket("gw-berlin-01", "sensor-gateway") != rollout.bucket("gw-berlin-01", "web")


@given(st.text(), st.text())
def test_bucket_is_stable_and_between_0_and_99(device, app):
    first = rollout.bucket(device, app)
    assert 0 <= first < 100
    assert rollout.bucket(device, app) == first


def test_no_waves_means_every_device_is_included():
    decision = decide((), now=SINCE)
    assert decision == rollout.RolloutDecision(
        included=True, bucket=28, open_percent=100, next_change=None, reason="no staged rollout"
    )


def test_the_reason_names_bucket_percent_wave_and_opening_time():
    decision = decide(SPEC_WAVES, now=SINCE + timedelta(hours=7))
    assert decision.included
    assert decision.open_percent == 50
    assert decision.reason == "bucket 28 < 50% of wave 2 opened 2026-11-20T14:00:00Z"
    assert decision.next_change == datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def test_an_excluded_device_is_told_which_wave_opens_next():
    decision = decide(SPEC_WAVES, now=SINCE)
    assert not decision.included
    assert decision.open_percent == 10
    assert decision.reason == (
        "bucket 28 >= 10% of wave 1 opened 2026-11-20T08:00:00Z; "
        "wave 2 (50%) opens 2026-11-20T14:00:00Z"
    )
    assert decision.next_change == SINCE + timedelta(hours=6)


@pytest.mark.parametrize(
    ("offset", "included", "open_percent"),
    [
        (-US, False, 10),  # one microsecond before wave 2: still wave 1 (10%), bucket 28 waits
        (timedelta(0), True, 50),  # at exactly since + 6h wave 2 is open
        (US, True, 50),
    ],
    ids=["one microsecond before", "at the instant", "one microsecond after"],
)
def test_a_wave_opens_at_exactly_since_plus_after(offset, included, open_percent):
    decision = decide(SPEC_WAVES, now=SINCE + timedelta(hours=6) + offset)
    assert decision.included is included
    assert decision.open_percent == open_percent


@pytest.mark.parametrize(
    ("offset", "open_percent", "next_change"),
    [
        (-US, 0, SINCE),
        (timedelta(0), 10, SINCE + timedelta(hours=6)),
        (US, 10, SINCE + timedelta(hours=6)),
    ],
    ids=["one microsecond before", "at the instant", "one microsecond after"],
)
def test_the_first_wave_opens_at_since(offset, open_percent, next_change):
    decision = decide(SPEC_WAVES, now=SINCE + offset, device="pi-0005", app="web")  # bucket 3
    assert decision.included is (open_percent > 3)
    assert decision.open_percent == open_percent
    assert decision.next_change == next_change


@pytest.mark.parametrize(
    ("offset", "open_percent", "next_change"),
    [(-US, 50, SINCE + timedelta(hours=24)), (timedelta(0), 100, None), (US, 100, None)],
    ids=["one microsecond before", "at the instant", "one microsecond after"],
)
def test_the_last_wave_opens_at_its_instant_and_nothing_follows(offset, open_percent, next_change):
    decision = decide(SPEC_WAVES, now=SINCE + timedelta(hours=24) + offset, device="gw-berlin-02")
    assert decision.bucket == 69
    assert decision.included is (open_percent == 100)
    assert decision.open_percent == open_percent
    assert decision.next_change == next_change


def test_no_open_wave_excludes_every_device_and_says_when_the_first_opens():
    waves = (model.Wave(percent=100, after=HOUR),)
    decision = decide(waves, now=SINCE + timedelta(minutes=59), device="pi-0005", app="web")
    assert not decision.included
    assert decision.open_percent == 0
    assert decision.next_change == SINCE + timedelta(hours=1)
    assert decision.reason == "bucket 3: no wave open yet; wave 1 (100%) opens 2026-11-20T09:00:00Z"


def test_a_clock_behind_since_opens_nothing():
    decision = decide(SPEC_WAVES, now=SINCE - timedelta(days=365))
    assert not decision.included
    assert decision.open_percent == 0
    assert decision.next_change == SINCE


@given(st.text(max_size=20), st.text(max_size=20))
def test_a_100_percent_wave_includes_every_bucket(device, app):
    waves = (model.Wave(percent=100),)
    assert rollout.decide(waves, device_name=device, app_name=app, since=SINCE, now=SINCE).included


def test_a_100_percent_wave_includes_all_hundred_buckets():
    devices = [f"pi-{n:04d}" for n in range(2000)]
    buckets = {rollout.bucket(d, "web") for d in devices}
    assert buckets == set(range(100))  # every bucket is reached, so the check below covers all
    waves = (model.Wave(percent=100),)
    assert all(decide(waves, now=SINCE, device=d, app="web").included for d in devices)


def test_a_0_percent_wave_includes_no_bucket():
    waves = (model.Wave(percent=0),)
    devices = [f"pi-{n:04d}" for n in range(2000)]
    assert not any(decide(waves, now=SINCE, device=d, app="web").included for d in devices)


def test_the_percent_boundary_is_strict():
    # bucket 28: a 28% wave leaves it out, 29% takes it in.
    assert not decide((model.Wave(percent=28),), now=SINCE).included
    assert decide((model.Wave(percent=29),), now=SINCE).included


def test_the_latest_open_wave_wins_even_if_listed_out_of_order():
    waves = (
        model.Wave(percent=100, after=24 * HOUR),
        model.Wave(percent=10),
        model.Wave(percent=50, after=6 * HOUR),
    )
    decision = decide(waves, now=SINCE + timedelta(hours=7))
    assert decision.open_percent == 50
    assert decision.reason == "bucket 28 < 50% of wave 3 opened 2026-11-20T14:00:00Z"
    assert decision.next_change == SINCE + timedelta(hours=24)


def test_a_later_wave_that_narrows_is_obeyed():
    # Pausing or shrinking is a pull request; the device follows the latest open wave, not the max.
    waves = (model.Wave(percent=50), model.Wave(percent=20, after=HOUR))
    assert decide(waves, now=SINCE).included
    assert not decide(waves, now=SINCE + timedelta(hours=1)).included


def test_a_wave_too_far_in_the_future_for_datetime_never_opens():
    waves = (model.Wave(percent=0), model.Wave(percent=100, after=1e15))
    decision = decide(waves, now=SINCE + timedelta(days=3650))
    assert not decision.included
    assert decision.open_percent == 0
    assert decision.next_change is None


@pytest.mark.parametrize("which", ["since", "now"])
def test_naive_datetimes_are_refused(which):
    naive = datetime(2026, 11, 20, 8, 0)  # naive on purpose
    kwargs = {"since": SINCE, "now": SINCE, which: naive}
    with pytest.raises(ValueError, match=f"{which} must be a timezone-aware datetime"):
        rollout.decide(SPEC_WAVES, device_name=DEVICE, app_name=APP, **kwargs)


def test_naive_datetimes_are_refused_even_without_waves():
    with pytest.raises(ValueError, match="now must be a timezone-aware"):
        decide((), now=datetime(2026, 11, 20))


def test_aware_datetimes_in_other_zones_compare_as_instants_and_print_in_utc():
    berlin = timezone(timedelta(hours=1))
    since = datetime(2026, 11, 20, 9, 0, tzinfo=berlin)  # 08:00Z
    decision = decide(SPEC_WAVES, since=since, now=datetime(2026, 11, 20, 14, 0, tzinfo=UTC))
    assert decision.included
    assert decision.reason == "bucket 28 < 50% of wave 2 opened 2026-11-20T14:00:00Z"


def test_the_decision_is_a_frozen_value():
    decision = decide(SPEC_WAVES, now=SINCE)
    with pytest.raises(AttributeError):
        decision.included = True  # type: ignore[misc]


@given(
    st.lists(st.integers(0, 100), min_size=1, max_size=5),
    st.text(max_size=10),
    st.integers(0, 40 * 24 * 3600),
    st.integers(0, 40 * 24 * 3600),
)
def test_with_widening_waves_a_device_once_in_stays_in(percents, device, t1, t2):
    percents = sorted(percents)
    waves = tuple(model.Wave(percent=p, after=n * 6 * HOUR) for n, p in enumerate(percents))
    early, late = sorted((t1, t2))
    first = decide(waves, now=SINCE + timedelta(seconds=early), device=device)
    second = decide(waves, now=SINCE + timedelta(seconds=late), device=device)
    assert first.open_percent <= second.open_percent
    if first.included:
        assert second.included
