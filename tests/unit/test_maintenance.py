"""Maintenance windows and the local hold (SPEC 3.1), pure: parsing, the in-window rule, the
next opening, across days, midnight and Europe/Berlin's DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reconciler.core import maintenance, settings
from reconciler.core.maintenance import Hold, HoldFileError, parse_window
from reconciler.errors import SettingsError

BERLIN = ZoneInfo("Europe/Berlin")
# 2026: DST starts Sun 29 March (02:00 CET -> 03:00 CEST), ends Sun 25 October (03:00 CEST ->
# 02:00 CET, so 02:00-03:00 happens twice).
SPRING = datetime(2026, 3, 29)
AUTUMN = datetime(2026, 10, 25)


def sched(*windows: str, zone: str = "Europe/Berlin") -> maintenance.Schedule:
    return maintenance.schedule([parse_window(w) for w in windows], ZoneInfo(zone))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("Mon-Fri 01:00-05:00", {0, 1, 2, 3, 4}, 60, 300),
        ("Sat,Sun 00:00-24:00", {5, 6}, 0, 1440),
        ("Sat, Sun 00:00-24:00", {5, 6}, 0, 1440),
        ("Fri-Mon 10:00-11:30", {4, 5, 6, 0}, 600, 690),
        ("mon,Wed-thu 9:05-9:10", {0, 2, 3}, 545, 550),
        ("Monday 01:00-02:00", {0}, 60, 120),
        ("03:00-04:00", set(range(7)), 180, 240),
        ("Fri 22:00-02:00", {4}, 1320, 120),
    ],
)
def test_windows_parse_days_lists_ranges_and_times(text, days, start, end):
    window = parse_window(text)
    assert (set(window.days), window.start, window.end) == (days, start, end)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Mon-Fri", 'expected "[DAYS] HH:MM-HH:MM"'),
        ("Mon 01:00", 'expected "[DAYS] HH:MM-HH:MM"'),
        ("Funday 01:00-02:00", 'unknown day "Funday"'),
        ("Mon,,Tue 01:00-02:00", "empty day"),
        ("Mon 24:00-24:00", '"24:00" is not a time of day from 00:00 to 23:59'),
        ("Mon 01:00-24:01", '"24:01" is not a time of day from 00:00 to 24:00'),
        ("Mon 01:60-02:00", '"01:60" is not a time of day'),
        ("Mon 05:00-05:00", "the window is empty"),
    ],
)
def test_bad_windows_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError) as caught:
        parse_window(text)
    assert problem in str(caught.value)


def config(maintenance_yaml: str) -> bytes:
    return (
        f"source: {{url: /srv/fleet}}\ntrust: {{allow_unsigned: true}}\n{maintenance_yaml}"
    ).encode()


def test_the_config_reads_windows_and_time_zone():
    loaded = settings.load(
        config('maintenance: {windows: ["Mon-Fri 01:00-05:00"], timezone: Europe/Berlin}\n'),
        file="config.yaml",
        env={},
        hostname="dev",
    )
    assert [w.text for w in loaded.maintenance.windows] == ["Mon-Fri 01:00-05:00"]
    assert loaded.maintenance.timezone == "Europe/Berlin"
    default = settings.load(config(""), file="config.yaml", env={}, hostname="dev")
    assert default.maintenance == settings.MaintenanceConfig()


def test_a_bad_maintenance_config_names_each_key_and_reason():
    with pytest.raises(SettingsError) as caught:
        settings.load(
            config(
                'maintenance: {windows: ["Mon 01:00-02:00", "Xyz 01:00-02:00", 7],'
                " timezone: Mars/Olympus, days: all}\n"
            ),
            file="config.yaml",
            env={},
            hostname="dev",
        )
    shown = [str(p) for p in caught.value.problems]
    assert any(s.startswith("config.yaml: maintenance.windows[1]: unknown day") for s in shown)
    assert any(
        s.startswith("config.yaml: maintenance.windows[2]: expected a string") for s in shown
    )
    assert any(
        s.startswith('config.yaml: maintenance.timezone: unknown IANA time zone "Mars/Olympus"')
        for s in shown
    )
    assert any("maintenance.days" in s for s in shown)
    assert len(shown) == 4


# --- in the window, and when it opens next ---------------------------------------------------


def test_no_windows_means_any_time():
    s = maintenance.schedule([], BERLIN)
    now = utc(2026, 6, 3, 12, 0)
    assert s.in_window(now)
    assert s.next_open(now) == now


def test_a_weekday_window_is_open_inside_and_closed_outside_in_its_time_zone():
    s = sched("Mon-Fri 01:00-05:00")
    # Wed 3 June 2026 (CEST, UTC+2): 01:00 local = 23:00 UTC the day before.
    assert not s.in_window(berlin(2026, 6, 3, 0, 59))
    assert s.in_window(berlin(2026, 6, 3, 1, 0))
    assert s.in_window(berlin(2026, 6, 3, 4, 59))
    assert not s.in_window(berlin(2026, 6, 3, 5, 0))  # the end is exclusive
    assert s.in_window(utc(2026, 6, 2, 23, 30))
    assert not s.in_window(berlin(2026, 6, 6, 2, 0))  # Saturday
    assert s.next_open(berlin(2026, 6, 3, 5, 0)) == berlin(2026, 6, 4, 1, 0)
    # Friday after the window: next Monday.
    assert s.next_open(berlin(2026, 6, 5, 12, 0)) == berlin(2026, 6, 8, 1, 0)
    assert s.next_open(berlin(2026, 6, 5, 12, 0)).tzinfo == UTC


def test_a_whole_day_window_ends_at_midnight_and_joins_the_next_day():
    s = sched("Sat,Sun 00:00-24:00")
    assert s.in_window(berlin(2026, 6, 6, 0, 0))
    assert s.in_window(berlin(2026, 6, 7, 23, 59))
    assert not s.in_window(berlin(2026, 6, 8, 0, 0))
    assert not s.in_window(berlin(2026, 6, 5, 23, 59))
    assert s.next_open(berlin(2026, 6, 5, 23, 59)) == berlin(2026, 6, 6, 0, 0)


def test_a_window_crossing_midnight_closes_the_next_morning():
    s = sched("Fri 22:00-02:00")
    assert not s.in_window(berlin(2026, 6, 5, 21, 59))
    assert s.in_window(berlin(2026, 6, 5, 22, 0))
    assert s.in_window(berlin(2026, 6, 6, 1, 59))  # Saturday morning, opened on Friday
    assert not s.in_window(berlin(2026, 6, 6, 2, 0))
    assert not s.in_window(berlin(2026, 6, 5, 1, 0))  # Friday morning: Thursday is not listed
    assert s.next_open(berlin(2026, 6, 6, 3, 0)) == berlin(2026, 6, 12, 22, 0)


def test_several_windows_any_one_opens():
    s = sched("Mon-Fri 01:00-05:00", "Sat,Sun 00:00-24:00")
    assert s.in_window(berlin(2026, 6, 6, 15, 0))
    assert s.in_window(berlin(2026, 6, 3, 2, 0))
    assert not s.in_window(berlin(2026, 6, 3, 15, 0))
    assert s.next_open(berlin(2026, 6, 5, 15, 0)) == berlin(2026, 6, 6, 0, 0)


def test_a_window_in_the_hour_skipped_in_spring_does_not_open_that_day():
    s = sched("Sun 02:00-03:00")
    # 01:59 CET is 00:59 UTC; one minute later it is 03:00 CEST: no instant is 02:xx local.
    for minute in range(0, 180):
        moment = utc(2026, 3, 29, 0, 0) + timedelta(minutes=minute)
        assert not s.in_window(moment), moment
    # It opens the next Sunday instead.
    assert s.next_open(utc(2026, 3, 28, 12, 0)) == berlin(2026, 4, 5, 2, 0)
    # On an ordinary Sunday it is open one hour.
    assert s.in_window(berlin(2026, 3, 22, 2, 30))


def test_a_window_starting_in_the_skipped_hour_opens_when_the_clocks_jump():
    s = sched("Sun 02:30-04:00")
    assert not s.in_window(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert s.in_window(utc(2026, 3, 29, 1, 0))  # 03:00 CEST
    assert s.next_open(utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 0)
    assert not s.in_window(utc(2026, 3, 29, 2, 0))  # 04:00 CEST


def test_the_repeated_autumn_hour_is_inside_the_window_both_times():
    s = sched("Sun 02:00-03:00")
    first = berlin(2026, 10, 25, 2, 30, fold=0)  # 00:30 UTC, CEST
    second = berlin(2026, 10, 25, 2, 30, fold=1)  # 01:30 UTC, CET
    assert first.astimezone(UTC) == utc(2026, 10, 25, 0, 30)
    assert second.astimezone(UTC) == utc(2026, 10, 25, 1, 30)
    assert s.in_window(first)
    assert s.in_window(second)
    open_minutes = sum(
        s.in_window(utc(2026, 10, 24, 22, 0) + timedelta(minutes=m)) for m in range(6 * 60)
    )
    assert open_minutes == 120  # two real hours
    assert s.next_open(utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 0)  # the first 02:00


def test_a_window_across_the_autumn_change_lasts_one_hour_longer_in_real_time():
    s = sched("Sat 23:00-04:00")
    minutes = sum(
        s.in_window(utc(2026, 10, 24, 20, 0) + timedelta(minutes=m)) for m in range(10 * 60)
    )
    assert minutes == 6 * 60
    minutes = sum(
        s.in_window(utc(2026, 3, 28, 20, 0) + timedelta(minutes=m)) for m in range(10 * 60)
    )
    assert minutes == 4 * 60  # spring: one hour shorter


def test_windows_in_utc_need_no_dst_handling():
    s = sched("Mon-Fri 01:00-05:00", zone="UTC")
    assert s.in_window(utc(2026, 3, 30, 1, 0))
    assert s.next_open(utc(2026, 3, 29, 12, 0)) == utc(2026, 3, 30, 1, 0)


def test_naive_instants_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        sched("Mon 01:00-02:00").in_window(datetime(2026, 1, 1))


# --- the hold and what Select is told ----------------------------------------------------------


def test_a_hold_round_trips_and_expires_by_itself():
    hold = Hold(since=utc(2026, 6, 1, 8, 0), until=utc(2026, 6, 1, 10, 0), reason="shift")
    assert maintenance.hold_from_json(maintenance.hold_to_json(hold)) == hold
    assert hold.active(utc(2026, 6, 1, 9, 59))
    assert not hold.active(utc(2026, 6, 1, 10, 0))
    forever = Hold(since=utc(2026, 6, 1, 8, 0))
    assert maintenance.hold_from_json(maintenance.hold_to_json(forever)) == forever
    assert forever.active(utc(2036, 1, 1))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"schema": "x"}', "schema"),
        (b'{"schema": "reconciler/hold/v1", "since": 3}', "since"),
        (b'{"schema": "reconciler/hold/v1", "since": "2026-01-01T00:00:00Z", "x": 1}', "'x'"),
        (
            b'{"schema": "reconciler/hold/v1", "since": "2026-01-01T00:00:00Z", "until": "soon"}',
            "until",
        ),
    ],
)
def test_a_damaged_hold_file_says_what_is_wrong(data, problem):
    with pytest.raises(HoldFileError, match=problem):
        maintenance.hold_from_json(data)


def test_a_hold_wins_over_a_closed_window_and_an_unreadable_hold_holds():
    s = sched("Mon 01:00-02:00", zone="UTC")
    closed = utc(2026, 6, 3, 12, 0)
    hold = Hold(since=utc(2026, 6, 3, 8, 0), reason="inventory count")
    found = maintenance.deferral(closed, schedule=s, hold=hold)
    assert found is not None and found.kind == "hold"
    assert "inventory count" in found.reason
    window = maintenance.deferral(closed, schedule=s, hold=None)
    assert window is not None and window.kind == "window"
    assert "next opens 2026-06-08T01:00:00Z" in window.reason
    assert maintenance.deferral(utc(2026, 6, 8, 1, 30), schedule=s, hold=None) is None
    expired = Hold(since=utc(2026, 6, 3, 8, 0), until=utc(2026, 6, 3, 9, 0))
    assert maintenance.deferral(utc(2026, 6, 8, 1, 30), schedule=s, hold=expired) is None
    damaged = maintenance.deferral(closed, schedule=None, hold=None, hold_error="not valid JSON")
    assert damaged is not None and damaged.kind == "hold"
