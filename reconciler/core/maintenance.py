"""When a device may take new revisions (SPEC 3.1 `maintenance`, `reconciler hold`), pure.

Owns the maintenance window syntax ("Mon-Fri 01:00-05:00", "Sat,Sun 00:00-24:00",
"Fri 22:00-02:00"), the rule deciding whether an instant is inside a window, the next instant a
window opens, and the local hold value with its JSON codec (`state_dir/hold.json`). Must not:
read the clock, the disk or the zone database beyond `zoneinfo` lookups (the caller passes
`now` and the zone), or decide which revision runs (`desired` does, with this answer).

Windows are wall-clock intervals in the configured time zone: an instant is inside a window
when its local wall time is. So across DST: on the spring-forward day a window inside the
skipped hour (02:00-03:00 in Europe/Berlin) does not open that day, and one that starts in it
opens when the clocks jump (03:00); in autumn the repeated hour is inside the window both
times it happens. A window whose end is before its start crosses midnight: it opens on the
listed days and closes the next morning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOLD_FILE = "hold.json"
HOLD_SCHEMA = "reconciler/hold/v1"
MAX_REASON = 500  # a hold's reason: one readable line in `status`

_WINDOW = re.compile(
    r"(?:(?P<days>[A-Za-z][A-Za-z,\- ]*?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
)
_MINUTES_PER_DAY = 24 * 60
_MAX_GAP_MINUTES = 3 * 60  # the largest clock jump a zone database holds is smaller
_SEARCH_DAYS = 15  # two weeks and a day: every weekly window opens in it, DST days included


@dataclass(frozen=True)
class Window:
    """A weekly window: the weekdays it opens on (0 = Monday) and start/end in minutes after
    local midnight; `end` may be 1440 (24:00), and `end <= start` means it closes the next day."""

    days: frozenset[int]
    start: int
    end: int
    text: str

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains_wall(self, day: date, minute: int) -> bool:
        """Is local wall time `minute` on `day` inside this window?"""
        if not self.crosses_midnight:
            return day.weekday() in self.days and self.start <= minute < self.end
        if day.weekday() in self.days and minute >= self.start:
            return True
        yesterday = (day - timedelta(days=1)).weekday()
        return yesterday in self.days and minute < self.end


def parse_window(text: str) -> Window:
    """One window, e.g. "Mon-Fri 01:00-05:00"; ValueError says what is wrong.

    Days: names (Mon..Sun, any case), comma lists and ranges (Fri-Mon wraps over the week);
    omitted: every day. Times: HH:MM, 00:00..23:59 for the start, up to 24:00 for the end.
    """
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f'expected "[DAYS] HH:MM-HH:MM" such as "Mon-Fri 01:00-05:00", got "{text}"'
        )
    days = _days(match["days"]) if match["days"] else frozenset(range(7))
    start = _minute(match["start"], allow_24=False)
    end = _minute(match["end"], allow_24=True)
    if start == end:
        raise ValueError(f'start and end are the same time in "{text}": the window is empty')
    return Window(days=days, start=start, end=end, text=text.strip())


def _days(text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            raise ValueError(f'empty day in "{text}"; expected e.g. "Mon,Wed" or "Mon-Fri"')
        first, dash, last = part.partition("-")
        a = _day(first)
        b = _day(last) if dash else a
        span = (b - a) % 7
        found.update((a + i) % 7 for i in range(span + 1))
    return frozenset(found)


def _day(name: str) -> int:
    for number, day in enumerate(DAYS):
        if name.lower() in (day.lower(), _long(day)):
            return number
    raise ValueError(f'unknown day "{name}"; expected one of {", ".join(DAYS)}')


def _long(day: str) -> str:
    return {
        "Mon": "monday",
        "Tue": "tuesday",
        "Wed": "wednesday",
        "Thu": "thursday",
        "Fri": "friday",
        "Sat": "saturday",
        "Sun": "sunday",
    }[day]


def _minute(text: str, *, allow_24: bool) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if allow_24 and (h, m) == (24, 0):
        return _MINUTES_PER_DAY
    if h > 23 or m > 59:
        limit = "24:00" if allow_24 else "23:59"
        raise ValueError(f'"{text}" is not a time of day from 00:00 to {limit}')
    return h * 60 + m


def zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone this device knows; None when it is."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f'unknown IANA time zone "{name}" (e.g. "Europe/Berlin", "UTC")'
    return None


@dataclass(frozen=True)
class Schedule:
    """The device's maintenance windows in its time zone; no windows = always open."""

    windows: tuple[Window, ...]
    zone: tzinfo

    def in_window(self, now: datetime) -> bool:
        """Is the aware instant `now` inside a window?"""
        if not self.windows:
            return True
        local = _require_aware(now).astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return any(w.contains_wall(local.date(), minute) for w in self.windows)

    def next_open(self, now: datetime) -> datetime | None:
        """The first instant at or after `now` inside a window (`now` itself when open), in
        UTC; None when no window opens in the next two weeks (only windows that exist solely
        in a skipped DST hour)."""
        if self.in_window(now):
            return now.astimezone(UTC)
        today = _require_aware(now).astimezone(self.zone).date()
        best: datetime | None = None
        for offset in range(-1, _SEARCH_DAYS):
            day = today + timedelta(days=offset)
            for window in self.windows:
                if day.weekday() not in window.days:
                    continue
                opens = self._opening(
                    datetime.combine(day, time(window.start // 60, window.start % 60))
                )
                if (
                    opens is not None
                    and opens >= now
                    and self.in_window(opens)
                    and (best is None or opens < best)
                ):
                    best = opens
        return best

    def _opening(self, wall: datetime) -> datetime | None:
        """The first instant whose local wall time is `wall` (fold=0: the first of a repeated
        hour) or, when the clocks skip it, the first instant after the jump."""
        opens = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if opens.astimezone(self.zone).replace(tzinfo=None) == wall:
            return opens
        # Skipped: fold=1 reads it with the offset after the jump, an instant before the jump;
        # the jump itself is on a minute boundary within the next few hours.
        moment = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        for _ in range(_MAX_GAP_MINUTES):
            moment += timedelta(minutes=1)
            if moment.astimezone(self.zone).replace(tzinfo=None) >= wall:
                return moment
        return None

    def describe(self) -> str:
        """The windows as configured, for reasons and `status`."""
        zone = getattr(self.zone, "key", None) or str(self.zone)
        return ", ".join(w.text for w in self.windows) + f" ({zone})"


def schedule(windows: Sequence[Window], zone: tzinfo) -> Schedule:
    return Schedule(tuple(windows), zone)


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {value.isoformat()}")
    return value


# --- the local hold --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """`reconciler hold`: no new revisions until `unhold`, or until `until` when set."""

    since: datetime
    until: datetime | None = None
    reason: str = ""

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def describe(self) -> str:
        parts = [f"held since {_iso(self.since)}"]
        if self.until is not None:
            parts.append(f"until {_iso(self.until)}")
        if self.reason:
            parts.append(f"reason: {self.reason}")
        return ", ".join(parts)


class HoldFileError(ValueError):
    """`hold.json` cannot be read as a hold."""


def hold_to_json(hold: Hold) -> bytes:
    doc = {
        "schema": HOLD_SCHEMA,
        "since": _iso(hold.since),
        "until": None if hold.until is None else _iso(hold.until),
        "reason": hold.reason,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def hold_from_json(data: bytes) -> Hold:
    """Parse `hold_to_json` output; HoldFileError names what is wrong."""
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HoldFileError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HoldFileError("expected a JSON object")
    if doc.get("schema") != HOLD_SCHEMA:
        raise HoldFileError(f"schema: expected {HOLD_SCHEMA!r}, got {doc.get('schema')!r}")
    unknown = sorted(set(doc) - {"schema", "since", "until", "reason"})
    if unknown:
        raise HoldFileError(f"unknown key {unknown[0]!r}")
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise HoldFileError("reason: expected a string")
    until = doc.get("until")
    return Hold(
        since=_parse_time("since", doc.get("since")),
        until=None if until is None else _parse_time("until", until),
        reason=reason,
    )


def _parse_time(key: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise HoldFileError(f"{key}: expected an ISO 8601 UTC time")
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise HoldFileError(f"{key}: expected YYYY-MM-DDTHH:MM:SSZ, got {value!r}") from None
    return parsed


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- what the Select step is told ------------------------------------------------------------


@dataclass(frozen=True)
class Deferral:
    """Why new revisions wait right now: `kind` is "window" or "hold" (the metric and
    `status` word), `reason` a sentence for people."""

    kind: str
    reason: str


def deferral(
    now: datetime,
    *,
    schedule: Schedule | None,
    hold: Hold | None,
    hold_error: str | None = None,
) -> Deferral | None:
    """Why a new revision may not be taken at `now`, or None when it may.

    A hold wins over a closed window (it is the operator's explicit word). A hold file that
    cannot be read holds: someone asked for a hold, and taking new revisions on a device whose
    operator wanted none is the worse mistake; `reconciler unhold` clears it.
    """
    if hold_error is not None:
        return Deferral("hold", f"hold file unreadable, treated as held: {hold_error}")
    if hold is not None and hold.active(now):
        return Deferral("hold", f"local hold ({hold.describe()})")
    if schedule is not None and not schedule.in_window(now):
        opens = schedule.next_open(now)
        when = f"; next opens {_iso(opens)}" if opens else ""
        return Deferral("window", f"outside the maintenance windows {schedule.describe()}{when}")
    return None
