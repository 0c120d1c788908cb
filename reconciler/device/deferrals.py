"""Whether this device may take new revisions now: its maintenance windows and local hold.

Shell around the pure `core.maintenance`: resolves the configured (or the device's local) time
zone, reads `state_dir/hold.json` each cycle (so `reconciler hold` works with or without a
daemon running), and answers with a `maintenance.Deferral` for the Select step. Must not: write
state, or decide which revision runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler import logs
from reconciler.core import maintenance
from reconciler.core.settings import DeviceSettings
from reconciler.device import state_store

_log = logging.getLogger("reconciler.maintenance")
LOCALTIME = Path("/etc/localtime")


def local_zone(env: dict[str, str] | None = None, localtime: Path = LOCALTIME) -> tzinfo:
    """The device's local time zone with its DST rules: `TZ` when it names a zone, else the
    zone `/etc/localtime` links to (or holds), else UTC."""
    found = (os.environ if env is None else env).get("TZ", "").lstrip(":")
    if found and maintenance.zone_problem(found) is None:
        return ZoneInfo(found)
    try:
        target = str(localtime.readlink())
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        name = target.rsplit("zoneinfo/", 1)[1]
        if maintenance.zone_problem(name) is None:
            return ZoneInfo(name)
    try:
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return UTC


def schedule(device_settings: DeviceSettings) -> maintenance.Schedule | None:
    """The configured windows in their zone; None when there are none (any time)."""
    config = device_settings.maintenance
    if not config.windows:
        return None
    zone = ZoneInfo(config.timezone) if config.timezone else local_zone()
    return maintenance.schedule(config.windows, zone)


@dataclass(frozen=True)
class HoldView:
    """The hold as `status` and the metrics show it: the saved hold, whether it is active now,
    and why the file cannot be read (a damaged file counts as held: see `maintenance.deferral`)."""

    hold: maintenance.Hold | None
    active: bool
    error: str | None = None


def read_hold(store: state_store.StateStore, now: datetime) -> HoldView:
    try:
        hold = store.load_hold()
    except maintenance.HoldFileError as exc:
        return HoldView(None, True, str(exc))
    except OSError as exc:
        return HoldView(None, True, f"{store.hold_path}: {exc.strerror or exc}")
    return HoldView(hold, hold is not None and hold.active(now))


def deferral(
    device_settings: DeviceSettings, store: state_store.StateStore, now: datetime
) -> tuple[maintenance.Deferral | None, HoldView, bool]:
    """(why new revisions wait, or None; the hold; whether `now` is in a window)."""
    view = read_hold(store, now)
    if view.error:
        logs.event(_log, logging.ERROR, "hold.unreadable", error=view.error, action="held")
    plan = schedule(device_settings)
    in_window = plan is None or plan.in_window(now)
    found = maintenance.deferral(now, schedule=plan, hold=view.hold, hold_error=view.error)
    return found, view, in_window


def next_change(
    device_settings: DeviceSettings, store: state_store.StateStore, now: datetime
) -> datetime | None:
    """When a deferral in force now ends by itself: the end of a timed hold (or the window
    opening after it), or the next window opening. None when nothing defers, or when only
    `reconciler unhold` ends it (it wakes the daemon itself). The daemon wakes then, so a
    window shorter than the poll interval is not slept through."""
    view = read_hold(store, now)
    plan = schedule(device_settings)
    if view.error is not None or (
        view.active and view.hold is not None and view.hold.until is None
    ):
        return None
    start = now
    if view.active and view.hold is not None and view.hold.until is not None:
        start = view.hold.until
    elif plan is None or plan.in_window(now):
        return None
    return start if plan is None else plan.next_open(start)
