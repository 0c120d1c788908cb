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
