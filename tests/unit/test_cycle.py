"""The reconcile cycle's behaviours (SPEC 3.2), in milliseconds: `Reconciler` over the fakes.

A real `StateStore` on tmp_path, real settings, real release and manifest bytes built by the
package's own builders; only the fleet repo, the engine and (where named) the signature check
are fakes (tests/fakes.py), each held to its real adapter by tests/integration/
test_port_contracts.py. The health wait is the real one: `health: {timeout: 1s, stable_for: 0s}`
decides a running container on its first look, so no test sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import model
from reconciler.core import release, settings, state
from reconciler.device.cycle import CycleOutcome, Reconciler
from reconciler.device.metrics import Metrics
from reconciler.device.state_store import StateStore
from tests.fakes import (
    UNHEALTHY,
    Behaviour,
    FakeClock,
    FakeEngine,
    FakeVerifier,
    FleetSimulator,
    app_manifest,
    exits,
    manifest_path,
)

NAMESPACE = "lab"
V1 = "registry.example/web:v1"
V2 = "registry.example/web:v2"
DB = "registry.example/db:1"
TRUST_UNSIGNED = "trust: {allow_unsigned: true}\n"
TRUST_CI = (
    "trust:\n  identities:\n"
    "    - identity: https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main\n"
    "      issuer: https://token.actions.example.test\n"
)


def web(image: str, **fields: object) -> bytes:
    return app_manifest("web", [{"name": "web", "image": image, **fields}])


def db() -> bytes:
    return app_manifest("db", [{"name": "db", "image": DB}])


def revision(data: bytes) -> str:
    return release.digest(data)


@dataclass
class Device:
    """One device: its settings and state_dir, the fleet it polls and the engine it drives."""

    fleet: FleetSimulator
    engine: FakeEngine
    store: StateStore
    reconciler: Reconciler
    clock: FakeClock
    state_dir: Path
    metrics: Metrics | None

    def cycle(self) -> CycleOutcome:
        return self.reconciler.cycle(now=self.clock.now())

    @property
    def state(self) -> state.DeviceState:
        return self.store.load()

    def running(self, app: str = "web") -> dict[str, str]:
        """Container -> image of `app`, for its containers that are running."""
        return {
            c.labels[model.LABEL_CONTAINER]: c.image
            for c in self.engine.containers.values()
            if c.app == app and c.status == "running"
        }

    def metric(self, name: str, **labels: str) -> float:
        assert self.metrics is not None
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def make_device(
    tmp_path: Path,
    *,
    trust: str = TRUST_UNSIGNED,
    remotes: tuple[str, ...] = ("origin",),
    metrics: bool = False,
    verifier: FakeVerifier | None = None,
    extra_config: str = "",
) -> Device:
    state_dir = tmp_path / "state"
    config = (
        "device: {name: dev-01, labels: {role: gateway}}\n"
        "source: {url: /srv/fleet}\n"
        f"{trust}"
        f"runtime: {{namespace: {NAMESPACE}}}\n"
        "health: {timeout: 1s, stable_for: 0s}\n"
        f"state_dir: {state_dir}\n"
        f"{extra_config}"
    )
    loaded = settings.load(config.encode(), file="config.yaml", env={}, hostname="dev-01")
    fleet = FleetSimulator(remotes=remotes)
    engine = FakeEngine(namespace=NAMESPACE)
    store = StateStore(state_dir)
    gauges = Metrics(remotes=remotes) if metrics else None
    clock = FakeClock()  # health waits and settling sleep on it: no real time passes
    reconciler = Reconciler(
        settings=loaded,
        labels={"role": "gateway"},
        git=fleet,
        engine=engine,
        store=store,
        metrics=gauges,
        verifier=verifier or FakeVerifier(accept=False, reason="unsigned"),
        clock=clock,
    )
    return Device(fleet, engine, store, reconciler, clock, state_dir, gauges)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return make_device(tmp_path)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and every path's mtime under `root` (root included): any write, even
    a temp file created and removed again, changes it."""
    found = {".": (b"", root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (data, path.stat().st_mtime_ns)
    return found


# --- applying a release ---------------------------------------------------------------------


def test_the_first_cycle_starts_every_pinned_app_and_records_what_it_applied(device: Device):
    commit = device.fleet.release({"web": web(V1), "db": db()})

    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert outcome.exit_code == 0
    assert device.running("web") == {"web": V1}
    assert device.running("db") == {"db": DB}
    container = device.engine.named(f"{NAMESPACE}_web_web")
    assert container.labels[model.LABEL_REVISION] == revision(web(V1))
    assert container.labels[model.LABEL_NAMESPACE] == NAMESPACE
    applied = device.state
    assert (applied.release_version, applied.commit) == (1, commit)
    assert {a.name: a.revision for a in applied.apps} == {
        "web": revision(web(V1)),
        "db": revision(db()),
    }
    assert applied.pending is None
    assert applied.last_error is None
    # The applied manifests are kept: a rollback needs no network.
    assert device.store.get_manifest(revision(web(V1))) == web(V1)


def test_an_unchanged_poll_changes_nothing_and_writes_nothing_to_state_dir(device: Device):
    device.fleet.release({"web": web(V1)})
    assert device.cycle().result == "converged"
    before = snapshot(device.state_dir)
    writes, fetches = len(device.engine.writes), device.fleet.fetches

    outcome = device.cycle()

    assert outcome.result == "unchanged", outcome.message
    assert device.engine.writes[writes:] == []
    assert device.fleet.fetches == fetches  # the head did not move: nothing fetched
    assert snapshot(device.state_dir) == before


def test_a_new_release_replaces_the_changed_container_and_keeps_the_previous_state(
    device: Device,
):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    old_id = device.engine.named(f"{NAMESPACE}_web_web").id

    device.fleet.release({"web": web(V2)})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V2}
    assert device.engine.named(f"{NAMESPACE}_web_web").id != old_id
    applied = device.state
    assert applied.release_version == 2
    assert [a.revision for a in applied.apps] == [revision(web(V2))]
    assert [a.revision for a in applied.previous_apps] == [revision(web(V1))]


@pytest.mark.parametrize("by_hand", ["stopped", "removed"])
def test_drift_is_corrected_without_a_new_release(device: Device, by_hand: str):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    state_before = device.state
    if by_hand == "stopped":
        device.engine.stop_by_hand(f"{NAMESPACE}_web_web")
    else:
        device.engine.remove_by_hand(f"{NAMESPACE}_web_web")

    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V1}
    kinds = {a.kind for a in outcome.actions if a.kind is not model.ActionKind.KEEP}
    assert kinds <= {model.ActionKind.PULL, model.ActionKind.CREATE, model.ActionKind.REPLACE}
    assert device.state.apps == state_before.apps
    assert device.state.release_version == 1


def test_an_app_dropped_from_the_release_is_pruned(device: Device):
    device.fleet.release({"web": web(V1), "db": db()})
    device.cycle()

    device.fleet.release({"db": None})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running("db") == {}
    assert device.running("web") == {"web": V1}
    assert [a.name for a in device.state.apps] == ["web"]
    assert f"{NAMESPACE}_db" not in device.engine.networks


def test_containers_of_another_namespace_are_never_touched(device: Device):
    foreign = {
        model.LABEL_APP: "web",
        model.LABEL_CONTAINER: "web",
        model.LABEL_REVISION: "r",
        model.LABEL_NAMESPACE: "other",
        model.LABEL_SPEC_DIGEST: "d",
    }
    kept = device.engine.add_foreign("other_web_web", V1, foreign)
    device.fleet.release({"web": web(V1)})

    assert device.cycle().result == "converged"

    assert kept in device.engine.containers
    assert len(device.engine.containers) == 2


# --- failures that leave the device as it was -----------------------------------------------


def test_a_failed_pull_leaves_everything_as_it_was_and_the_next_cycle_applies(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    applied = device.state
    old_id = device.engine.named(f"{NAMESPACE}_web_web").id
    device.fleet.release({"web": web(V2)})
    device.engine.fail_pull(V2)
    writes = len(device.engine.writes)

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "nothing was changed" in outcome.message
    assert device.engine.named(f"{NAMESPACE}_web_web").id == old_id
    assert device.running() == {"web": V1}
    assert device.engine.writes[writes:] == [("pull", V2)]
    after = device.state
    assert (after.apps, after.release_version, after.pending) == (applied.apps, 1, None)
    assert after.held_back == ()  # nothing was wrong with the revision: it is tried again

    device.engine.heal()
    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}


def test_an_unreachable_source_fails_the_cycle_and_the_next_cycle_recovers(tmp_path: Path):
    device = make_device(tmp_path, metrics=True)
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.fail_remote(reason="connection refused")

    first, second = device.cycle(), device.cycle()

    assert (first.result, second.result) == ("failed", "failed")
    assert "fetch failed, kept the applied state" in first.message
    assert device.reconciler.fetch_failures == 2
    assert device.reconciler.backoff_failures == 2
    assert device.metric("reconciler_fetch_errors_total", remote="origin") == 2
    assert device.running() == {"web": V1}  # the applied state still runs

    device.fleet.heal()
    device.fleet.release({"web": web(V2)})
    outcome = device.cycle()
    assert outcome.result == "converged", outcome.message
    assert device.reconciler.fetch_failures == 0
    assert device.running() == {"web": V2}
    assert device.state.last_error is None


def test_a_primary_remote_down_behind_a_mirror_is_counted_and_the_mirror_serves(tmp_path: Path):
    device = make_device(tmp_path, remotes=("primary", "mirror"), metrics=True)
    device.fleet.release({"web": web(V1)})
    device.fleet.fail_remote("primary")

    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.metric("reconciler_fetch_errors_total", remote="primary") == 1
    assert device.metric("reconciler_fetch_errors_total", remote="mirror") == 0
    assert device.reconciler.fetch_failures == 0


def test_an_engine_that_does_not_answer_fails_the_cycle_and_the_daemon_lives_on(device: Device):
    device.fleet.release({"web": web(V1)})
    device.engine.go_down()

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "engine" in outcome.message
    device.engine.heal()
    assert device.cycle().result == "converged"


# --- refused releases -------------------------------------------------------------------------


def test_a_manifest_whose_bytes_do_not_match_its_pin_is_refused_and_the_device_keeps_its_state(
    tmp_path: Path,
):
    device = make_device(tmp_path, metrics=True)
    device.fleet.release({"web": web(V1)})
    device.cycle()
    applied = device.state
    # Changed after the release was made: the release still pins the old bytes.
    device.fleet.publish({manifest_path("web"): web(V2)}, "edited without a release")

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "rejected, kept the applied state" in outcome.message
    assert device.running() == {"web": V1}
    assert device.engine.writes[-1][0] == "create_and_start"  # the first apply's, nothing since
    after = device.state
    assert (after.apps, after.release_version) == (applied.apps, applied.release_version)
    assert "does not match" in (after.last_verification_failure or "")
    reason = "pin_mismatch"
    assert device.metric("reconciler_verification_failures_total", reason=reason) == 1


def test_a_release_whose_version_goes_backwards_is_refused(device: Device):
    first = device.fleet.release({"web": web(V1)})
    device.fleet.release({"web": web(V2)})
    device.cycle()
    # A mirror replays the older, validly made release as the newest commit.
    device.fleet.publish(device.fleet.files_at(first), "replay")

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "refusing a rollback" in outcome.message
    assert device.running() == {"web": V2}
    after = device.state
    assert after.release_version == 2
    assert [a.revision for a in after.apps] == [revision(web(V2))]
    assert "lower than the applied version 2" in (after.last_verification_failure or "")


def test_another_release_with_the_applied_version_is_refused_as_an_equivocation(
    device: Device,
):
    device.fleet.release({"web": web(V1)})
    device.cycle()

    device.fleet.release({"web": web(V2)}, version=1)
    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "equivocation" in outcome.message
    assert device.running() == {"web": V1}


def test_an_expired_release_applies_nothing_new_and_keeps_the_running_apps(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)}, now=device.clock.now(), expires_in=60)
    device.clock.advance(120)

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert "expired" in outcome.message
    assert device.running() == {"web": V1}


def test_a_release_the_verifier_refuses_is_not_applied(tmp_path: Path):
    refusing = FakeVerifier(accept=False, reason="wrong_identity")
    device = make_device(tmp_path, trust=TRUST_CI, verifier=refusing)
    device.fleet.release({"web": web(V1)})

    outcome = device.cycle()

    assert outcome.result == "failed"
    assert device.engine.writes == []
    assert device.state.apps == ()
    assert "refused" in (device.state.last_verification_failure or "")


def test_a_signed_release_the_verifier_accepts_is_applied(tmp_path: Path):
    verifier = FakeVerifier(accept=True)
    device = make_device(tmp_path, trust=TRUST_CI, verifier=verifier)
    device.fleet.release({"web": web(V1)})

    assert device.cycle().result == "converged"

    release_bytes = device.fleet.files_at(device.fleet.head_commit or "")[release.RELEASE_PATH]
    assert verifier.verified == [release_bytes]
    assert device.running() == {"web": V1}


# --- health and rollback ----------------------------------------------------------------------


def test_an_unhealthy_change_is_rolled_back_and_its_revision_held_back(tmp_path: Path):
    device = make_device(tmp_path, metrics=True)
    device.fleet.release({"web": web(V1)})
    device.cycle()
    checked = web(V2, health={"docker": True, "failure_threshold": 1})
    device.fleet.release({"web": checked})
    device.engine.behave(V2, UNHEALTHY)

    outcome = device.cycle()

    assert outcome.result == "rolled_back", outcome.message
    assert outcome.exit_code == 3
    assert "health check failed" in outcome.message
    assert device.running() == {"web": V1}
    after = device.state
    assert [a.revision for a in after.apps] == [revision(web(V1))]
    (held,) = after.held_back
    assert (held.app, held.revision, held.release_version) == ("web", revision(checked), 2)
    assert held.reason.startswith("health check failed")
    assert after.last_error == outcome.message
    assert device.metric("reconciler_rollbacks_total", app="web") == 1

    # The held-back revision is not tried again: the next poll leaves the engine alone (and
    # records the release as seen, its held-back app kept at the previous revision).
    writes = len(device.engine.writes)
    again = device.cycle()
    assert again.result == "converged", again.message
    assert again.message == "state recorded; containers already match"
    assert device.engine.writes[writes:] == []
    assert device.state.release_version == 2
    assert [h.revision for h in device.state.held_back] == [revision(checked)]

    # A new manifest for the app is applied as usual.
    device.fleet.release({"web": web(V2)})
    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}
    assert device.state.held_back == ()


@pytest.mark.parametrize(
    ("behaviour", "fields", "reason"),
    [
        (UNHEALTHY, {"health": {"docker": True, "failure_threshold": 1}}, "reports unhealthy"),
        (exits(1), {"restart": "no"}, "exited with code 1"),
        (
            Behaviour(exec_exit_code=1),
            {"health": {"exec": ["check"], "failure_threshold": 1}},
            "exited 1",
        ),
        # Two more restarts since the wait began: three looks, two 0.25 s polls of the clock.
        (Behaviour(crash_loop=True), {}, "keeps restarting"),
    ],
    ids=["docker-unhealthy", "exits", "exec-fails", "crash-loop"],
)
def test_each_kind_of_certain_failure_rolls_back_before_the_timeout(
    device: Device, behaviour: Behaviour, fields: dict[str, object], reason: str
):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2, **fields)})
    device.engine.behave(V2, behaviour)

    outcome = device.cycle()

    assert outcome.result == "rolled_back", outcome.message
    assert reason in outcome.message
    assert device.running() == {"web": V1}


def test_the_health_wait_polls_on_the_devices_clock_not_in_real_time(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.engine.behave(V2, Behaviour(crash_loop=True))

    assert device.cycle().result == "rolled_back"

    # The polls between looks slept on the injected clock (a real sleep would leave it empty).
    assert device.clock.slept


def test_a_replacement_that_cannot_be_created_is_reported_as_rolled_back(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.engine.fail_create("web")

    outcome = device.cycle()

    assert outcome.result == "rolled_back", outcome.message
    assert "apply failed" in outcome.message
    assert device.running() == {"web": V1}
    assert [a.revision for a in device.state.apps] == [revision(web(V1))]


def test_a_replacement_that_cannot_be_created_is_held_back_and_its_transaction_closed(
    device: Device,
):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.engine.fail_create("web")

    device.cycle()

    after = device.state
    assert after.pending is None
    assert [h.revision for h in after.held_back] == [revision(web(V2))]


def test_an_engine_that_goes_away_mid_apply_is_not_blamed_on_the_revision(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.engine.fail_create("web", reason="connection reset by peer", unavailable=True)

    outcome = device.cycle()

    assert outcome.result == "rolled_back", outcome.message
    assert device.state.held_back == () and device.state.pending is None
    device.engine.heal()
    assert device.cycle().result == "converged"  # tried again: the revision was not at fault
    assert device.running() == {"web": V2}


def test_roll_back_by_hand_returns_to_the_previous_state_and_holds_the_revision_back(
    device: Device,
):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.cycle()

    outcome = device.reconciler.roll_back_by_hand(now=device.clock.now())

    assert outcome.result == "converged", outcome.message
    assert outcome.message == "returned to the previous state"
    assert device.running() == {"web": V1}
    after = device.state
    assert [a.revision for a in after.apps] == [revision(web(V1))]
    (held,) = after.held_back
    assert (held.revision, held.reason) == (revision(web(V2)), "rolled back by hand")
    # The next poll does not put the rolled-back revision back.
    assert device.cycle().result == "unchanged"
    assert device.running() == {"web": V1}


def test_roll_back_by_hand_without_a_previous_state_touches_nothing(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    writes = len(device.engine.writes)

    outcome = device.reconciler.roll_back_by_hand(now=device.clock.now())

    assert outcome.result == "failed"
    assert outcome.message == "no previous state to return to"
    assert device.engine.writes[writes:] == []


def test_a_transaction_left_open_by_a_crash_is_finished_by_the_next_cycle(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    applied = device.state
    # A crash right after the transaction was recorded, before the engine was touched.
    pending = state.Transaction(
        from_apps=applied.apps,
        to_apps=applied.apps,
        release_version=2,
        commit=device.fleet.head_commit or "",
        started_at="2026-01-01T00:00:00Z",
    )
    device.store.save(state.DeviceState(**{**applied.__dict__, "pending": pending}))

    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.state.pending is None
    assert device.running() == {"web": V2}
