"""Paused and aborted rollouts from the signed release, on the device (SPEC 2.3, 3.2 step 3).

The device of tests/unit/test_cycle.py; the release carries `paused` / `abort` as
`reconciler release` writes them from `.fleet/rollout.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import model
from reconciler.core import maintenance
from tests.fakes import app_manifest
from tests.unit.test_cycle import DB, NAMESPACE, V1, V2, Device, db, make_device, revision, web

V3 = "registry.example/web:v3"


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return make_device(tmp_path, metrics=True)


def on_v2_after_v1(device: Device) -> None:
    device.fleet.release({"web": web(V1)})
    assert device.cycle().result == "converged"
    device.fleet.release({"web": web(V2)})
    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}


# --- paused -----------------------------------------------------------------------------------


def test_a_paused_rollout_keeps_what_the_device_runs_and_shows_it_paused(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()

    device.fleet.release({"web": web(V2)}, paused=["web"])
    device.cycle()

    assert device.running() == {"web": V1}
    (found,) = device.state.waiting
    assert (found.app, found.revision, found.kind) == ("web", revision(web(V2)), "paused")
    assert (
        device.metric("reconciler_app_info", app="web", revision=revision(web(V2)), state="paused")
        == 1
    )

    device.fleet.release({"web": web(V2)})  # resumed: the entry is gone
    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}
    assert device.state.waiting == ()


def test_a_device_already_on_the_paused_revision_keeps_it(device: Device):
    on_v2_after_v1(device)
    writes = len(device.engine.writes)

    device.fleet.release({"web": web(V2)}, paused=["web"])
    device.cycle()

    assert device.running() == {"web": V2}
    assert device.engine.writes[writes:] == []
    assert device.state.waiting == ()


def test_a_paused_new_app_is_not_installed(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()

    device.fleet.release({"db": db()}, paused=["db"])
    device.cycle()

    assert device.running("db") == {}
    assert [(w.app, w.kind) for w in device.state.waiting] == [("db", "paused")]


# --- abort ------------------------------------------------------------------------------------


def test_an_abort_returns_the_device_to_its_previous_revision_without_pulling_and_holds_it_back(
    device: Device,
):
    on_v2_after_v1(device)
    device.engine.fail_pull()  # the registry is unreachable: V1 comes from the engine's copy

    device.fleet.release({"web": web(V2)}, abort={"web": revision(web(V2))})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V1}
    after = device.state
    assert [a.revision for a in after.apps] == [revision(web(V1))]
    (held,) = after.held_back
    assert (held.app, held.revision, held.reason) == (
        "web",
        revision(web(V2)),
        "aborted by release 3",
    )
    assert [(w.app, w.kind) for w in after.waiting] == [("web", "aborted")]
    assert (
        device.metric(
            "reconciler_app_info", app="web", revision=revision(web(V2)), state="held_back"
        )
        == 1
    )

    # It stays there: the aborted revision is never taken again while the release pins it.
    writes = len(device.engine.writes)
    assert device.cycle().result == "unchanged"
    assert device.engine.writes[writes:] == []


def test_an_abort_uses_the_apps_own_previous_revision_after_other_apps_changed(device: Device):
    device.fleet.release({"web": web(V1), "db": db()})
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.cycle()
    # Another app changes later: the device's whole previous state now has web on V2.
    device.fleet.release(
        {"db": app_manifest("db", [{"name": "db", "image": DB, "env": {"X": "1"}}])}
    )
    device.cycle()
    assert [a.revision for a in device.state.previous_apps if a.name == "web"] == [
        revision(web(V2))
    ]

    device.fleet.release({}, abort={"web": revision(web(V2))})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running("web") == {"web": V1}
    assert device.running("db") == {"db": DB}


def test_a_device_that_never_took_the_aborted_revision_never_will(device: Device):
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.store.save_hold(maintenance.Hold(since=device.clock.now()))
    device.fleet.release({"web": web(V2)})
    device.cycle()
    assert device.running() == {"web": V1}

    device.fleet.release({"web": web(V2)}, abort={"web": revision(web(V2))})
    device.store.clear_hold()
    device.cycle()

    assert device.running() == {"web": V1}
    assert [(w.app, w.kind) for w in device.state.waiting] == [("web", "aborted")]
    assert device.state.held_back == ()  # nothing to hold back: it never ran here
    # Reported paused: held_back would count it in fleet-status as a device that tried and
    # failed the revision, which it never ran.
    labels = {"app": "web", "revision": revision(web(V2))}
    assert device.metric("reconciler_app_info", **labels, state="paused") == 1
    assert device.metric("reconciler_app_info", **labels, state="held_back") == 0


def test_an_abort_with_no_previous_revision_removes_the_app(device: Device):
    device.fleet.release({"web": web(V1), "db": db()})
    device.cycle()

    device.fleet.release({"web": web(V1)}, abort={"web": revision(web(V1))})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running("web") == {}
    assert f"{NAMESPACE}_web_web" not in {c.name for c in device.engine.containers.values()}
    assert device.running("db") == {"db": DB}
    assert [a.name for a in device.state.apps] == ["db"]
    assert [(h.app, h.revision) for h in device.state.held_back] == [("web", revision(web(V1)))]


def test_an_abort_is_not_deferred_by_a_hold_or_a_closed_window(tmp_path: Path):
    device = make_device(
        tmp_path,
        extra_config='maintenance: {windows: ["Mon 02:00-03:00"], timezone: UTC}\n',
    )
    # Thursday 00:00 UTC: outside the window; the first revisions come in as urgent ones.
    import yaml

    def urgent(data: bytes) -> bytes:
        doc = yaml.safe_load(data)
        doc["spec"]["rollout"] = {"urgent": True}
        return yaml.safe_dump(doc).encode()

    device.fleet.release({"web": urgent(web(V1))})
    device.cycle()
    device.fleet.release({"web": urgent(web(V2))})
    device.cycle()
    assert device.running() == {"web": V2}
    device.store.save_hold(maintenance.Hold(since=device.clock.now()))

    device.fleet.release({}, abort={"web": revision(urgent(web(V2)))})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V1}


def test_an_abort_ignores_a_release_that_is_not_verified(tmp_path: Path):
    from tests.fakes import FakeVerifier
    from tests.unit.test_cycle import TRUST_CI

    verifier = FakeVerifier(accept=True)
    device = make_device(tmp_path, trust=TRUST_CI, verifier=verifier)
    on_v2_after_v1(device)
    verifier.accept = False

    device.fleet.release({"web": web(V2)}, abort={"web": revision(web(V2))})
    assert device.cycle().result == "failed"

    assert device.running() == {"web": V2}
    assert device.state.held_back == ()
    _ = model  # the labels module is what the engine fake keys on
