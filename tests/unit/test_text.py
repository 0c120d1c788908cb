"""text.utc_time: the one way the package writes an instant (release.json, state, logs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from reconciler import text


def test_an_instant_is_written_in_utc_with_a_z_to_the_second():
    two_hours_east = timezone(timedelta(hours=2))
    moment = datetime(2026, 5, 1, 14, 0, 1, 987_654, tzinfo=two_hours_east)
    assert text.utc_time(moment) == "2026-05-01T12:00:01Z"


def test_milliseconds_are_cut_not_rounded_as_log_timestamps_want():
    moment = datetime(2026, 5, 1, 12, 0, 1, 999_999, tzinfo=UTC)
    assert text.utc_time(moment, timespec="milliseconds") == "2026-05-01T12:00:01.999Z"


def test_auto_shows_microseconds_only_when_there_are_some():
    assert text.utc_time(datetime(2026, 5, 1, tzinfo=UTC), timespec="auto") == (
        "2026-05-01T00:00:00Z"
    )
    assert text.utc_time(datetime(2026, 5, 1, 0, 0, 0, 500_000, tzinfo=UTC), timespec="auto") == (
        "2026-05-01T00:00:00.500000Z"
    )


def test_a_year_before_1000_keeps_four_digits_which_strftime_would_drop():
    assert text.utc_time(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00Z"


def test_a_naive_time_is_refused_rather_than_read_in_the_hosts_zone():
    with pytest.raises(ValueError, match="timezone-aware"):
        text.utc_time(datetime(2026, 5, 1))  # naive on purpose
