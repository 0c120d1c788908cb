"""The device's local time zone for maintenance windows (`device.deferrals.local_zone`): TZ,
then what /etc/localtime links to or holds, else UTC; a real /etc/localtime is never needed."""

from __future__ import annotations

import shutil
from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

import pytest

from reconciler.device.deferrals import local_zone


def zone_file(name: str) -> Path:
    import zoneinfo

    for root in zoneinfo.TZPATH:
        path = Path(root) / name
        if path.is_file():
            return path
    pytest.skip(f"no zone file for {name} on this machine")


def test_tz_names_the_zone_and_wins(tmp_path: Path):
    assert "Europe/Berlin" in available_timezones()
    assert local_zone({"TZ": "Europe/Berlin"}, tmp_path / "none") == ZoneInfo("Europe/Berlin")
    assert local_zone({"TZ": ":Asia/Tokyo"}, tmp_path / "none") == ZoneInfo("Asia/Tokyo")


def test_a_localtime_link_into_the_zone_database_names_its_zone(tmp_path: Path):
    link = tmp_path / "localtime"
    link.symlink_to(zone_file("America/New_York"))
    assert local_zone({}, link) == ZoneInfo("America/New_York")
    assert local_zone({"TZ": "Not/AZone"}, link) == ZoneInfo("America/New_York")


def test_a_copied_localtime_keeps_its_rules(tmp_path: Path):
    copy = tmp_path / "localtime"
    shutil.copy(zone_file("Europe/Berlin"), copy)
    zone = local_zone({}, copy)
    from datetime import datetime

    summer, winter = datetime(2026, 7, 1, 12, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert summer.astimezone(zone).utcoffset().total_seconds() == 7200  # type: ignore[union-attr]
    assert winter.astimezone(zone).utcoffset().total_seconds() == 3600  # type: ignore[union-attr]


def test_no_zone_anywhere_is_utc(tmp_path: Path):
    assert local_zone({}, tmp_path / "missing") is UTC


# --- when the daemon wakes for a deferral that ends by itself ----------------------------------


def settings_with(extra: str, state_dir: Path):
    from reconciler.core import settings

    text = f"source: {{url: /srv/fleet}}\ntrust: {{allow_unsigned: true}}\nstate_dir: {state_dir}\n"
    return settings.load((text + extra).encode(), file="c.yaml", env={}, hostname="dev")


WINDOW = 'maintenance: {windows: ["Mon-Fri 02:00-03:00"], timezone: UTC}\n'


def test_the_daemon_wakes_when_the_window_opens_or_a_timed_hold_ends(tmp_path: Path):
    from datetime import datetime, timedelta

    from reconciler.core.maintenance import Hold
    from reconciler.device.deferrals import next_change
    from reconciler.device.state_store import StateStore

    store = StateStore(tmp_path / "state")
    windowed = settings_with(WINDOW, store.state_dir)
    anytime = settings_with("", store.state_dir)
    thursday_noon = datetime(2026, 1, 1, 12, tzinfo=UTC)
    friday_0200 = datetime(2026, 1, 2, 2, tzinfo=UTC)

    assert next_change(windowed, store, thursday_noon) == friday_0200
    assert next_change(windowed, store, friday_0200) is None  # open: nothing to wait for
    assert next_change(anytime, store, thursday_noon) is None

    store.save_hold(Hold(since=thursday_noon, until=thursday_noon + timedelta(hours=1)))
    assert next_change(anytime, store, thursday_noon) == thursday_noon + timedelta(hours=1)
    # A hold ending outside the window: the window opening after it.
    assert next_change(windowed, store, thursday_noon) == friday_0200
    store.save_hold(Hold(since=thursday_noon))
    assert next_change(anytime, store, thursday_noon) is None  # only unhold ends it
    store.hold_path.write_text("{damaged")
    assert next_change(windowed, store, thursday_noon) is None
