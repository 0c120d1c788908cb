"""Staged rollout waves (SPEC 2.1 `spec.rollout.waves`), decided on each device with no server.

Pure: waves, the device and app names and two instants in; a `RolloutDecision` out. The clock is
read by the caller once per cycle and passed as `now` (so `plan` and the daemon agree, and tests
need no fake clock). It does not decide which revision runs: `desired` keeps the old revision
when a decision says "not yet". Wave values (percent 0..100, after >= 0) are validated by
`manifests`; this module only refuses naive datetimes, which would make the answer depend on the
device's local time zone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler import model
from reconciler.text import utc_time


@dataclass(frozen=True)
class RolloutDecision:
    """Whether this device takes the app's new revision now, and why.

    `open_percent` is the percent of the latest open wave (0 when no wave has opened yet, 100
    when the app has no waves); `next_change` is when the next wave opens (None when every wave
    is open), for logs and `plan` output.
    """

    included: bool
    bucket: int
    open_percent: int
    next_change: datetime | None
    reason: str


def bucket(device_name: str, app_name: str) -> int:
    """The device's stable bucket 0..99 for an app (SPEC 2.1).

    Keyed by app as well as device, so the same devices are not always the canaries.
    """
    digest = hashlib.sha256((device_name + "/" + app_name).encode()).hexdigest()
    return int(digest[:8], 16) % 100


def decide(
    waves: Sequence[model.Wave],
    *,
    device_name: str,
    app_name: str,
    since: datetime,
    now: datetime,
) -> RolloutDecision:
    """Is the device in the latest wave open at `now`?

    A wave opens at `since + after`, inclusive (at exactly that instant it is open). The latest
    open wave is the one with the greatest opening time at or before `now`; among waves opening
    at the same instant the one listed last wins. The device is included when its bucket is
    below that wave's percent. No waves means no staged rollout: every device is included.
    A `now` before `since` (a clock behind the release) opens nothing, so the device keeps what
    it runs rather than guessing.
    """
    _require_aware("since", since)
    _require_aware("now", now)
    mine = bucket(device_name, app_name)
    if not waves:
        return RolloutDecision(True, mine, 100, None, "no staged rollout")

    # (opening instant, 1-based wave number, wave), in opening order; stable for equal instants.
    # A wave whose instant is past datetime's range never opens.
    schedule = sorted(
        (
            (opens_at, n, w)
            for n, w in enumerate(waves, start=1)
            if (opens_at := _opens_at(since, w.after)) is not None
        ),
        key=lambda item: item[0],
    )
    opened = [item for item in schedule if item[0] <= now]
    upcoming = [item for item in schedule if item[0] > now]
    next_change = upcoming[0][0] if upcoming else None
    then = (
        f"; wave {upcoming[0][1]} ({upcoming[0][2].percent}%) opens "
        f"{utc_time(upcoming[0][0], timespec='auto')}"
        if upcoming
        else ""
    )

    if not opened:
        return RolloutDecision(
            False, mine, 0, next_change, f"bucket {mine}: no wave open yet{then}"
        )

    opens_at, number, wave = opened[-1]
    included = mine < wave.percent
    relation = "<" if included else ">="
    reason = (
        f"bucket {mine} {relation} {wave.percent}% of wave {number} opened "
        f"{utc_time(opens_at, timespec='auto')}"
    )
    # An included device waits for nothing, so only an excluded one is told when to expect more.
    return RolloutDecision(
        included, mine, wave.percent, next_change, reason + ("" if included else then)
    )


def _opens_at(since: datetime, after: float) -> datetime | None:
    try:
        return since + timedelta(seconds=after)
    except OverflowError:
        return None


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (UTC), got naive {value.isoformat()}"
        )
