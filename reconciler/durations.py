"""Durations as users write them: `90s`, `5m`, `1h`, `1d`, `1h30m`, `500ms`.

Pure; used by the device config and the manifests' rollout waves.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(text: object) -> float:
    """Return the duration in seconds, or raise ValueError with a message fit for users.

    A bare number is not accepted: `60` could mean seconds or minutes, and a fleet-wide
    misreading (poll every 60 hours) is worse than an error at start.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a duration like 60s, got {_show(text)}")
    value = text.strip()
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"expected a duration like 60s, got {_show(text)}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(value))


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest exact form (`3600` -> `1h`), for messages."""
    if seconds and seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds:g}s"


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)
