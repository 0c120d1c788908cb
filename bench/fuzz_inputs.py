"""Long fuzz profile of every input boundary (the fast one runs in `tests/fuzz`).

Runs the same hypothesis strategies as `tests/fuzz/test_inputs.py` (structure-aware mutations of
valid documents, raw byte mutations, random bytes) through manifests, the device config, label
files, inventories, releases, bare YAML and durations, and prints, per boundary and in all:
cases, crashes (anything but the documented error, or a message that is unbounded or not one
escaped line), hangs, the slowest case and the process's peak RSS. A case over 2 s is retried
twice and is a hang only when every try is that slow (a loaded machine stalls now and then; such
stalls are counted apart); a case is interrupted after 30 s. Exit status 1 on any crash or hang.

    .venv/bin/python -m bench.fuzz_inputs [--cases 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import resource
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from hypothesis import HealthCheck, Phase, given, seed, settings

from testkit import boundaries

HANG_SECONDS = 2.0
INTERRUPT_SECONDS = 30


class _Interrupted(Exception):
    """Raised by the alarm inside a case that ran past INTERRUPT_SECONDS."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted


def run_boundary(boundary: boundaries.Boundary, cases: int, rng_seed: int) -> dict[str, object]:
    crashes: collections.Counter[str] = collections.Counter()
    examples: dict[str, bytes] = {}
    stats = {"cases": 0, "hangs": 0, "stalls": 0, "slowest": 0.0}

    def timed(data: bytes) -> tuple[BaseException | None, float]:
        signal.alarm(INTERRUPT_SECONDS)
        started = time.perf_counter()
        try:
            failure = boundaries.check(boundary, data)
        except _Interrupted:
            failure = TimeoutError(f"interrupted after {INTERRUPT_SECONDS}s")
        finally:
            signal.alarm(0)
        return failure, time.perf_counter() - started

    @seed(rng_seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # the body never fails: nothing to shrink
        suppress_health_check=list(HealthCheck),
    )
    @given(data=boundaries.inputs(boundary))
    def one(data: bytes) -> None:
        failure, elapsed = timed(data)
        stats["cases"] += 1
        if elapsed > HANG_SECONDS:
            # On a shared machine a case can stall for reasons of its own; a hang is a case
            # that is slow again when retried (twice), as hypothesis confirms a deadline.
            stats["stalls"] += 1
            elapsed = min(elapsed, *(timed(data)[1] for _ in range(2)))
        stats["slowest"] = max(stats["slowest"], elapsed)
        if elapsed > HANG_SECONDS:
            stats["hangs"] += 1
            examples.setdefault(f"hang {elapsed:.1f}s", data)
        if failure is not None:
            kind = f"{type(failure).__name__}: {str(failure)[:100]}"
            crashes[kind] += 1
            examples.setdefault(kind, data)

    one()
    return {**stats, "crashes": crashes, "examples": examples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="in all (default 100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", help="directory to write each crash's and hang's input to")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    per_boundary = max(1, -(-args.cases // len(boundaries.BOUNDARIES)))  # at least --cases
    started = time.perf_counter()
    total = {"cases": 0, "crashes": 0, "hangs": 0, "stalls": 0}
    print(f"{'boundary':<10} {'cases':>8} {'crashes':>8} {'hangs':>6} {'slowest':>9}")
    for boundary in boundaries.BOUNDARIES:
        result = run_boundary(boundary, per_boundary, args.seed)
        crashes = result["crashes"]
        assert isinstance(crashes, collections.Counter)
        n_crashes = sum(crashes.values())
        print(
            f"{boundary.name:<10} {result['cases']:>8} {n_crashes:>8} {result['hangs']:>6} "
            f"{result['slowest']:>8.3f}s",
            flush=True,
        )
        examples = result["examples"]
        assert isinstance(examples, dict)
        for kind, count in crashes.most_common(10):
            print(f"    {count:>6} x {kind}\n           e.g. {examples[kind][:200]!r}")
        for i, (kind, data) in enumerate(examples.items()):
            if kind.startswith("hang"):
                print(f"    {kind}: e.g. {data[:200]!r}")
            if args.save:  # whole inputs, to replay: boundaries.check(boundary, bytes)
                Path(args.save).mkdir(parents=True, exist_ok=True)
                (Path(args.save) / f"{boundary.name}-{i}.bin").write_bytes(data)
        total["cases"] += int(result["cases"])  # type: ignore[call-overload]
        total["crashes"] += n_crashes
        total["hangs"] += int(result["hangs"])  # type: ignore[call-overload]
        total["stalls"] += int(result["stalls"])  # type: ignore[call-overload]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"total: {total['cases']} cases, {total['crashes']} crashes, {total['hangs']} hangs "
        f"(> {HANG_SECONDS:g} s, also on two retries; {total['stalls']} slow once only), "
        f"peak RSS {peak_mib:.0f} MiB, "
        f"{time.perf_counter() - started:.0f} s wall"
    )
    return 1 if total["crashes"] or total["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
