"""`reconciler plan` on a large fleet: prints the median wall time for the README.

Builds a real Git fleet repo with --apps app manifests (default 5,000), commits them, writes and
commits a release pinning every one, then times `plan` for one device against that release,
and once more with the release removed (the work tree alone). Nothing here needs an engine or a
network. Every number is the median of --runs runs (default 5).

    .venv/bin/python -m bench.plan_bench [--apps 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from reconciler.fleet import plan, release_verb
from reconciler.fleet.devices import Device
from testkit.fleet_repos import FleetRepo

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def build_repo(root: Path, apps: int) -> None:
    fleet = FleetRepo(root)
    for i in range(apps):
        name = f"app-{i:05d}"
        fleet.app(
            name, image=f"127.0.0.1:5000/{name}:1.0", selector="{matchLabels: {role: gateway}}"
        )
    fleet.commit("apps")
    code, _ = release_verb.write_release(root, now=NOW, expires_in=86400.0, out=io.StringIO())
    if code != 0:
        raise SystemExit("release of the bench repo failed")
    fleet.commit("release 1")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the git processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_plan(root: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run (CPU time is steadier on a busy machine)."""
    device = Device("gw-01", {"role": "gateway"})
    wall, cpu = [], []
    for _ in range(runs):
        out, err = io.StringIO(), io.StringIO()
        start, start_cpu = time.perf_counter(), cpu_seconds()
        code = plan.plan(root, devices=[device], now=NOW, out=out, err=err)
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
        if code != 0 or err.getvalue():
            raise SystemExit(f"plan failed ({code}): {err.getvalue()[:500]}")
    return wall, cpu


def report(what: str, wall: list[float], cpu: list[float]) -> None:
    print(
        f"{what}: median {statistics.median(wall):.2f} s wall, "
        f"{statistics.median(cpu):.2f} s CPU (wall min {min(wall):.2f}, max {max(wall):.2f}; "
        f"{len(wall)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        root = Path(tmp) / "fleet"
        root.mkdir()
        start = time.perf_counter()
        build_repo(root, args.apps)
        print(f"built a fleet repo of {args.apps} apps in {time.perf_counter() - start:.1f} s")
        report(
            f"plan, {args.apps} apps against a release pinning them all",
            *time_plan(root, args.runs),
        )
        (root / ".fleet" / "release.json").unlink()
        report(f"plan, {args.apps} apps without a release", *time_plan(root, args.runs))


if __name__ == "__main__":
    main()
