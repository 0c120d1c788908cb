"""Durations as users write them: `90s`, `5m`, `1h`, `1d`, `1h30m`, `500ms`.

Pure; used by the device config and the manifests' rollout waves. Every duration it accepts can
be slept (`time.sleep`, `select`, `threading.Event.wait`) and added to a clock reading: values
past MAX_SECONDS are refused here, at validation, instead of overflowing in a running daemon.
"""

from __future__ import annotations

import math
import re

from reconciler import text

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
# 100 years: far beyond any poll interval, wave or timeout, and well inside what every sleep
# call takes (threading.TIMEOUT_MAX is about 292 years on 64-bit systems).
MAX_SECONDS = 100 * 365 * 86400.0
_MAX_TEXT = 64  # longer text is no duration a person wrote; refused before the regex runs


def parse_duration(text: object) -> float:
    """Return the duration in seconds, or raise ValueError with a message fit for users.

    A bare number is not accepted: `60` could mean seconds or minutes, and a fleet-wide
    misreading (poll every 60 hours) is worse than an error at start.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a duration like 60s, got {_show(text)}")
    value = text.strip()
    if len(value) > _MAX_TEXT or not _WHOLE.fullmatch(value):
        raise ValueError(f"expected a duration like 60s, got {_show(text)}")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(value))
    if not seconds <= MAX_SECONDS:  # also catches inf from a number too long for a float
        raise ValueError(f"{_show(text)} is longer than the maximum of 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest exact form (`3600` -> `1h`), for messages."""
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        return f"{seconds:g}s"
    if seconds and seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds:g}s"


def _show(value: object) -> str:
    return (
        f'"{text.one_line(value, 80)}"'
        if isinstance(value, str)
        else text.one_line(repr(value), 80)
    )
