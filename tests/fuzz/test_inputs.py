"""Fast fuzz profile: every input boundary, structure-aware and raw inputs, a few thousand cases.

Each input must yield a value or the boundary's documented error with one-line, bounded
messages, within 2 seconds. The long profile is `bench/fuzz_inputs.py`.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from testkit import boundaries

# 400 cases per boundary, 2,800 in all; no example database, so every run is fresh and
# nothing is written into the work tree.
FAST = settings(
    max_examples=400,
    deadline=None,  # timed below with a generous bound instead of hypothesis' flaky deadline
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_CASE_SECONDS = 2.0


@pytest.mark.parametrize("boundary", boundaries.BOUNDARIES, ids=lambda b: b.name)
def test_every_input_is_a_value_or_the_documented_error(boundary: boundaries.Boundary) -> None:
    @FAST
    @given(data=boundaries.inputs(boundary))
    def one(data: bytes) -> None:
        started = time.perf_counter()
        failure = boundaries.check(boundary, data)
        elapsed = time.perf_counter() - started
        if failure is not None:
            raise failure
        if elapsed >= SLOW_CASE_SECONDS:  # a shared machine stalls now and then: time it again
            started = time.perf_counter()
            boundaries.check(boundary, data)
            elapsed = time.perf_counter() - started
        assert elapsed < SLOW_CASE_SECONDS, f"{boundary.name} took {elapsed:.2f}s"

    one()


def test_the_seeds_are_valid_so_mutations_start_from_a_real_document() -> None:
    for boundary in boundaries.BOUNDARIES:
        data = boundaries.dump(boundary.seed, as_json=boundary.as_json)
        if boundary.name == "duration":
            data = boundary.seed.encode()
        assert boundary.run(data) is not None or boundary.name == "yaml", boundary.name
