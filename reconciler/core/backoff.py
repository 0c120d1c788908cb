"""Retry and poll delays: jittered exponential backoff and jittered intervals.

Owns the arithmetic only. The daemon calls `delay` after a failed cycle (attempt 1, 2, ...) and
`jittered` between ordinary polls, then sleeps itself; this module must not sleep, read clocks or
do any other I/O. Jitter exists so a fleet of devices that lost the same Git server at the same
moment does not return to it in lockstep.
"""

from __future__ import annotations

import random

# Past this many doublings any sane initial delay is far above any sane cap; stopping here keeps
# `2 ** n` from growing without bound (and float conversion from overflowing) on long outages.
_MAX_DOUBLINGS = 64

# Used when the caller passes no generator; tests pass a seeded `random.Random` instead.
_RNG = random.Random()  # noqa: S311 - spreading retries needs no cryptographic randomness


def delay(
    attempt: int,
    *,
    initial: float,
    cap: float,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    The base is `initial * 2 ** (attempt - 1)`, capped at `cap`; then it is spread by up to
    `jitter` (a fraction, 0..1) either way. Jitter is applied after the cap on purpose: clamping
    afterwards would pile every long-failing device onto exactly `cap` again.
    """
    if attempt < 1:
        raise ValueError(f"attempt: must be 1 or more, got {attempt}")
    if initial < 0 or cap < 0:
        raise ValueError(f"initial and cap: must not be negative, got {initial} and {cap}")
    doublings = min(attempt - 1, _MAX_DOUBLINGS)
    base = min(cap, initial * float(2**doublings))
    return _spread(base, jitter=jitter, rng=rng)


def jittered(interval: float, *, jitter: float, rng: random.Random | None = None) -> float:
    """A poll interval spread by up to `jitter` (a fraction, 0..1) either way."""
    if interval < 0:
        raise ValueError(f"interval: must not be negative, got {interval}")
    return _spread(interval, jitter=jitter, rng=rng)


def _spread(value: float, *, jitter: float, rng: random.Random | None) -> float:
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter: must be between 0 and 1, got {jitter}")
    if jitter == 0.0 or value == 0.0:
        return value
    source = rng if rng is not None else _RNG
    return value * (1.0 + source.uniform(-jitter, jitter))
