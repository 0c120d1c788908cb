"""Properties of the maintenance windows over any window text, zone and instant (hypothesis).

Any text is a window or a one-line ValueError; `next_open` is the earliest instant at or after
`now` that is inside a window, in every zone, across DST changes (checked minute by minute, as
windows and zone offsets move on whole minutes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core import maintenance

QUICK = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
DAY_NAMES = st.sampled_from(maintenance.DAYS)
TIMES = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 30]))
WINDOWS = st.builds(
    lambda a, b, start, end: f"{a}-{b} {start}-{end}", DAY_NAMES, DAY_NAMES, TIMES, TIMES
).filter(lambda text: text.split()[1].split("-")[0] != text.split()[1].split("-")[1])
# Around the 2026 DST changes of the zones above, and ordinary days.
INSTANTS = st.sampled_from(
    [
        datetime(2026, 3, 28, tzinfo=UTC),
        datetime(2026, 3, 7, tzinfo=UTC),
        datetime(2026, 4, 4, tzinfo=UTC),
        datetime(2026, 10, 3, tzinfo=UTC),
        datetime(2026, 10, 24, tzinfo=UTC),
        datetime(2026, 10, 31, tzinfo=UTC),
        datetime(2026, 6, 10, tzinfo=UTC),
    ]
).flatmap(lambda day: st.integers(0, 48 * 60).map(lambda m: day + timedelta(minutes=m)))


@QUICK
@given(st.text(max_size=40))
def test_any_text_is_a_window_or_a_one_line_error(text: str) -> None:
    try:
        window = maintenance.parse_window(text)
    except ValueError as exc:
        assert "\n" not in str(exc).replace(text, "")
    else:
        assert window.days and 0 <= window.start < 1440 and 0 < window.end <= 1440


@QUICK
@given(st.lists(WINDOWS, min_size=1, max_size=3), st.sampled_from(ZONES), INSTANTS)
def test_next_open_is_the_first_minute_inside_a_window(
    windows: list[str], zone: str, now: datetime
) -> None:
    plan = maintenance.schedule([maintenance.parse_window(w) for w in windows], ZoneInfo(zone))
    opens = plan.next_open(now)
    assert opens is not None  # windows of half an hour or more always open within the week
    assert opens >= now
    assert plan.in_window(opens)
    # Every whole minute before it (from now) is outside: it is the first.
    moment = now
    while moment < opens:
        assert not plan.in_window(moment), moment
        moment += timedelta(minutes=1)
