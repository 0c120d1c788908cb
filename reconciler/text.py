"""Text that is safe to print: one line, control characters escaped, bounded in length.

Owns the single rule for showing untrusted text (file names, YAML keys and values, release
fields, remote messages) in error messages, CLI output and logs. A value from a fleet repo or a
config may hold newlines or terminal escapes (a forged "every pin matches" line in a CI log) or be
a megabyte long; every message that echoes one passes it through `one_line` first.
Also the one way an instant is written (`utc_time`): release.json, state, status, logs.
Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

# Longest message line we print: long enough for a path, a field path and a reason.
MESSAGE_LIMIT = 1000


def escape(text: str) -> str:
    """`text` with every non-printable character shown as its Python escape (`\\n`, `\\x1b`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`escape(text)`, cut to `limit` characters with a note of how much was left out."""
    shown = escape(text)
    if len(shown) <= limit:
        return shown
    keep = max(limit - 40, 0)  # room for the note, which is under 40 characters
    return f"{shown[:keep]}... ({len(shown) - keep} more characters)"


def utc_time(
    moment: datetime, *, timespec: Literal["seconds", "milliseconds", "auto"] = "seconds"
) -> str:
    """`2026-05-01T12:00:01Z`: RFC 3339 in UTC with a `Z`, to `timespec` ("auto": microseconds
    only when there are some). Always four year digits (strftime writes year 999 as "999").

    A naive `moment` is a ValueError: guessing its zone would shift the time by the host's offset.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware time, got {moment!r}")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"
