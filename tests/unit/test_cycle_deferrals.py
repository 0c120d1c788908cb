"""Maintenance windows, the local hold and urgent apps in the cycle (SPEC 3.1, 3.2 step 3).

The same device as tests/unit/test_cycle.py (real settings, StateStore, release bytes; fake
fleet, engine and clock), with `maintenance` configured. The fake clock starts on Thursday
2026-01-01 00:00 UTC; the window used opens at 02:00 UTC on weekdays.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from reconciler.core import maintenance, status
from tests.fakes import UNHEALTHY, app_manifest
from tests.unit.test_cycle import DB, NAMESPACE, V1, V2, Device, db, make_device, revision, web

WINDOW = 'maintenance: {windows: ["Mon-Fri 02:00-04:00"], timezone: UTC}\n'
THU_0000 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3600.0


def urgent(data: bytes) -> bytes:
    doc = yaml.safe_load(data)
    doc["spec"]["rollout"] = {"urgent": True}
    return yaml.safe_dump(doc, sort_keys=False).encode()


@pytest.fixture
def windowed(tmp_path: Path) -> Device:
    """A device inside its window at first (02:00 Thursday), so it can take a first release."""
    device = make_device(tmp_path, metrics=True, extra_config=WINDOW)
    device.clock.advance(2 * HOUR)
    return device


def close_window(device: Device) -> None:
    device.clock.advance(3 * HOUR)  # 05:00: closed until 02:00 Friday


def waiting(device: Device) -> dict[str, tuple[str, str]]:
    return {w.app: (w.revision, w.kind) for w in device.state.waiting}


def test_outside_the_window_a_new_revision_waits_and_is_shown_pending_with_why(
    windowed: Device,
):
    device = windowed
    device.fleet.release({"web": web(V1)})
    assert device.cycle().result == "converged"
    close_window(device)

    device.fleet.release({"web": web(V2)})
    writes = len(device.engine.writes)
    outcome = device.cycle()

    # The release is recorded as seen; the engine is not touched.
    assert outcome.message == "state recorded; containers already match"
    assert device.engine.writes[writes:] == []
    assert device.running() == {"web": V1}
    assert waiting(device) == {"web": (revision(web(V2)), "window")}
    (found,) = device.state.waiting
    assert "outside the maintenance windows Mon-Fri 02:00-04:00 (UTC)" in found.reason
    assert "next opens 2026-01-02T02:00:00Z" in found.reason
    assert device.metric("reconciler_in_maintenance_window") == 0
    assert (
        device.metric("reconciler_app_info", app="web", revision=revision(web(V2)), state="pending")
        == 1
    )
    # The series of the running state is gone: one series per app.
    assert (
        device.metric("reconciler_app_info", app="web", revision=revision(web(V1)), state="running")
        == 0
    )
    doc = status.report(device.state, device="dev-01", state_dir="/s", observed=[], volumes=[])
    assert doc["pending_revisions"][0]["kind"] == "window"
    assert any("[window]" in line for line in status.render(doc))

    device.clock.advance(21 * HOUR)  # Friday 02:00: the window opens
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V2}
    assert device.state.waiting == ()
    assert device.metric("reconciler_in_maintenance_window") == 1
    assert (
        device.metric("reconciler_app_info", app="web", revision=revision(web(V2)), state="running")
        == 1
    )


def test_an_unchanged_cycle_outside_the_window_writes_nothing(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    close_window(device)
    device.fleet.release({"web": web(V2)})
    device.cycle()
    before = device.store.state_path.read_bytes(), device.store.state_path.stat().st_mtime_ns

    assert device.cycle().result == "unchanged"

    assert (device.store.state_path.read_bytes(), device.store.state_path.stat().st_mtime_ns) == (
        before
    )


def test_outside_the_window_drift_is_still_corrected(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    close_window(device)
    device.fleet.release({"web": web(V2)})
    device.engine.stop_by_hand(f"{NAMESPACE}_web_web")

    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V1}  # put back, on the revision it ran
    assert device.metric("reconciler_drift_corrections_total", app="web") == 1


def test_outside_the_window_a_new_app_is_not_installed_but_a_dropped_one_is_removed(
    windowed: Device,
):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    close_window(device)

    device.fleet.release({"web": None, "db": db()})
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running("web") == {}
    assert device.running("db") == {}
    assert waiting(device) == {"db": (revision(db()), "window")}


def test_an_urgent_app_is_applied_outside_the_window_and_during_a_hold(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1), "db": db()})
    device.cycle()
    close_window(device)
    device.store.save_hold(maintenance.Hold(since=device.clock.now(), reason="shift"))

    device.fleet.release(
        {
            "web": urgent(web(V2)),
            "db": app_manifest("db", [{"name": "db", "image": DB, "env": {"A": "1"}}]),
        }
    )
    outcome = device.cycle()

    assert outcome.result == "converged", outcome.message
    assert device.running() == {"web": V2}
    assert [w.app for w in device.state.waiting] == ["db"]
    assert device.state.waiting[0].kind == "hold"  # the hold is named over the window


def test_a_hold_defers_new_revisions_until_unhold_even_inside_the_window(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.store.save_hold(maintenance.Hold(since=device.clock.now(), reason="stock count"))

    device.fleet.release({"web": web(V2)})
    assert device.cycle().message == "state recorded; containers already match"
    assert device.running() == {"web": V1}
    (found,) = device.state.waiting
    assert (found.kind, "stock count" in found.reason) == ("hold", True)
    assert device.metric("reconciler_hold") == 1
    assert device.metric("reconciler_in_maintenance_window") == 1

    assert device.store.clear_hold()
    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}
    assert device.metric("reconciler_hold") == 0


def test_a_hold_for_a_while_ends_by_itself(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    now = device.clock.now()
    device.store.save_hold(maintenance.Hold(since=now, until=now + timedelta(minutes=30)))
    device.fleet.release({"web": web(V2)})
    device.cycle()
    assert device.running() == {"web": V1}

    device.clock.advance(30 * 60)

    assert device.cycle().result == "converged"
    assert device.running() == {"web": V2}
    assert device.metric("reconciler_hold") == 0


def test_a_damaged_hold_file_holds_and_says_so(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.store.hold_path.write_bytes(b"{not json")
    device.fleet.release({"web": web(V2)})

    device.cycle()

    assert device.running() == {"web": V1}
    (found,) = device.state.waiting
    assert found.kind == "hold"
    assert "hold file unreadable, treated as held" in found.reason
    assert str(device.store.hold_path) in found.reason
    assert device.metric("reconciler_hold") == 1
    assert device.store.clear_hold()  # unhold removes a damaged file too
    assert device.cycle().result == "converged"


def test_a_rollback_is_not_deferred_by_a_hold(windowed: Device):
    device = windowed
    device.fleet.release({"web": web(V1)})
    device.cycle()
    checked = urgent(web(V2, health={"docker": True, "failure_threshold": 1}))
    device.fleet.release({"web": checked})
    device.engine.behave(V2, UNHEALTHY)
    device.store.save_hold(maintenance.Hold(since=device.clock.now()))

    outcome = device.cycle()

    assert outcome.result == "rolled_back", outcome.message
    assert device.running() == {"web": V1}
