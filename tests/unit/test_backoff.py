"""Backoff and poll-interval arithmetic, with seeded generators."""

from __future__ import annotations

import random

import pytest

from reconciler.core import backoff


def test_delay_doubles_from_initial_without_jitter() -> None:
    delays = [backoff.delay(n, initial=1.0, cap=1000.0, jitter=0.0) for n in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_delay_stops_growing_at_the_cap() -> None:
    assert backoff.delay(7, initial=1.0, cap=30.0, jitter=0.0) == 30.0
    assert backoff.delay(50, initial=5.0, cap=300.0, jitter=0.0) == 300.0


def test_delay_survives_a_very_long_outage() -> None:
    assert backoff.delay(10**6, initial=2.0, cap=600.0, jitter=0.0) == 600.0


def test_jittered_delay_stays_within_the_fraction_either_way() -> None:
    rng = random.Random(7)
    for attempt in range(1, 20):
        base = min(60.0, 0.5 * 2 ** (attempt - 1))
        value = backoff.delay(attempt, initial=0.5, cap=60.0, jitter=0.2, rng=rng)
        assert base * 0.8 <= value <= base * 1.2


def test_jitter_is_applied_after_the_cap_so_capped_devices_still_spread() -> None:
    rng = random.Random(1)
    values = {backoff.delay(30, initial=1.0, cap=60.0, jitter=0.1, rng=rng) for _ in range(50)}
    assert len(values) == 50
    assert min(values) < 60.0 < max(values)
    assert all(54.0 <= v <= 66.0 for v in values)


def test_same_seed_gives_the_same_delays() -> None:
    first = [backoff.delay(n, initial=1, cap=60, jitter=0.5, rng=random.Random(3)) for n in (1, 4)]
    again = [backoff.delay(n, initial=1, cap=60, jitter=0.5, rng=random.Random(3)) for n in (1, 4)]
    assert first == again


def test_delay_without_a_generator_still_respects_the_bounds() -> None:
    for _ in range(100):
        assert 9.0 <= backoff.delay(2, initial=10.0, cap=10.0, jitter=0.1) <= 11.0


def test_jittered_interval_spreads_polls_around_the_interval() -> None:
    rng = random.Random(42)
    values = [backoff.jittered(60.0, jitter=0.1, rng=rng) for _ in range(1000)]
    assert all(54.0 <= v <= 66.0 for v in values)
    # A fleet's polls must not cluster on one side of the interval.
    assert sum(v < 60.0 for v in values) > 400
    assert sum(v > 60.0 for v in values) > 400


def test_zero_jitter_returns_the_interval_exactly() -> None:
    assert backoff.jittered(60.0, jitter=0.0, rng=random.Random(0)) == 60.0


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        backoff.jittered(60.0, jitter=jitter)
    with pytest.raises(ValueError, match="jitter"):
        backoff.delay(1, initial=1.0, cap=2.0, jitter=jitter)


def test_attempt_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff.delay(0, initial=1.0, cap=2.0, jitter=0.0)


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        backoff.jittered(-1.0, jitter=0.1)
    with pytest.raises(ValueError, match="initial"):
        backoff.delay(1, initial=-1.0, cap=2.0, jitter=0.0)
