"""SIGKILL soak: `reconciler once` killed at random moments of applies and rollbacks, restarted.

The randomized sibling of tests/integration/test_crash_safety.py, with its harness
(testkit/crash_harness.py) and its invariant: good and bad changes alternate (a bad one's web
container exits at once, so the health check fails and the change is rolled back); each
`reconciler once` is SIGKILLed (its whole process group) after a delay drawn uniformly from the
measured span of an uninterrupted run of its kind, then `reconciler once` runs again,
uninterrupted. After each restart:

- mixed state: the managed containers are neither exactly the state before the change nor
  exactly the state it aimed for (every container of the new revision), or one is not running;
- lost last-good state: state.json unreadable or with a transaction left open after the
  restart, or its apps other than the containers, or (after a bad change) other than the last
  good state; also checked right after the kill, before the restart: state.json readable and
  naming either the last good or the new state.

Runs until --kills processes were really killed (a delay past the end of a run kills nothing and
is counted apart). Prints the kills, the mixed states, the lost last-good states, and the
distribution of the kill moments (fraction of the span, and where each killed run was by the
records it logged: start-up, fetch/verify/pull, apply after its n-th action, health wait, rollback
after its n-th action, exiting).

Usage (as root, engine started or reused the way the tests do it; about 30 minutes):

    nice -n 10 .venv/bin/python -m bench.soak_sigkill [--kills 200] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker

from bench.engine_bench import machine
from reconciler import text
from reconciler.core import state
from testkit.crash_harness import (
    HEALTH,
    Containers,
    all_running,
    observed,
    push_images,
    release_step,
    run_once,
)
from testkit.device_lab import DeviceLab, remove_namespace
from testkit.engine import acquire
from testkit.images import ImageFactory, check_busybox
from testkit.registry import LocalRegistry

MANIFEST = "apps/web/app.yaml"


@dataclass
class Tally:
    """What the soak saw, for the report."""

    runs: int = 0
    kills: int = 0
    finished_before_kill: int = 0
    mixed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    fractions: dict[str, list[float]] = field(default_factory=lambda: {"apply": [], "rollback": []})
    last_steps: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {"apply": collections.Counter(), "rollback": collections.Counter()}
    )


def revisions(containers: Containers) -> tuple[tuple[str, str], ...]:
    """(app, revision) of each app among the containers."""
    return tuple(sorted({(c[0], c[2]) for c in containers}))


def keys(containers: Containers) -> tuple[tuple[str, str, str], ...]:
    return tuple((c[0], c[1], c[2]) for c in containers)


def saved(lab: DeviceLab) -> state.DeviceState:
    return state.from_json((lab.state_dir / "state.json").read_bytes())


def kill_phase(log: Path) -> str:
    """Where the killed run was, from the JSON records it logged before the kill."""
    events = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "event" in record:
                    events.append(str(record["event"]))
    steps = [e for e in events if e.startswith(("apply.", "health.wait", "rollback.start"))]
    if not events:
        return "start-up (nothing logged yet)"
    if "cycle.done" in events:
        return "after cycle.done (exiting)"
    if "rollback.start" in events:
        after = steps[steps.index("rollback.start") + 1 :]
        return f"rollback, after {after[-1]} #{len(after)}" if after else "rollback, at its start"
    if steps and steps[-1] == "health.wait":
        return "health wait"
    if steps:
        return f"apply, after {steps[-1]} #{len(steps)}"
    return "fetch, verify, pull"


def restart_said(log: Path) -> str:
    """What a run that did not finish the change said: its error records and its last line."""
    said = []
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                    said.append(f"{record.get('event')}: {record.get('error') or record}")
        said += lines[-1:]
    return " | ".join(said) or "(nothing)"


def quietly_release(lab: DeviceLab, refs: dict[str, str], **kwargs: object) -> str:
    """Commit a change (release_step) without `release`'s report; the revision it aims for."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        release_step(lab, refs, **kwargs)  # type: ignore[arg-type]
    return hashlib.sha256((lab.fleet.root / MANIFEST).read_bytes()).hexdigest()


def measure(lab: DeviceLab, refs: dict[str, str], port: int, step: int, *, bad: bool) -> float:
    quietly_release(lab, refs, port=port, step=step, bad=bad)
    code, seconds = run_once(lab)
    expected = 3 if bad else 0
    if code != expected:
        log = (lab.root / "once.log").read_text()[-2000:]
        raise SystemExit(f"an uninterrupted run exited {code}, expected {expected}:\n{log}")
    return seconds


def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    lease = acquire()
    client = docker.DockerClient(base_url=lease.url, timeout=120)
    registry = LocalRegistry(client)
    tmp = Path(tempfile.mkdtemp(prefix="reconciler-sigkill-"))
    namespace = f"soak-kill-{os.getpid()}"
    try:
        refs = push_images(ImageFactory(client, busybox=check_busybox()), registry)
        lab = DeviceLab(tmp / "device", docker_host=lease.url, namespace=namespace)
        lab.write_config(health=HEALTH)
        port = lab.free_port()
        # How long an uninterrupted apply and an uninterrupted failed change (with its
        # rollback) take here: the spans the kill moments are drawn from.
        step = 0
        good_spans, bad_spans = [], []
        for _ in range(3):
            good_spans.append(measure(lab, refs, port, step, bad=False))
            bad_spans.append(measure(lab, refs, port, step + 1, bad=True))
            step += 2
        spans = {"apply": statistics.median(good_spans), "rollback": statistics.median(bad_spans)}
        print(
            f"spans (median of 3 uninterrupted runs): apply {spans['apply']:.2f} s, "
            f"failed change with its rollback {spans['rollback']:.2f} s; seed {args.seed}",
            flush=True,
        )
        before = observed(client, namespace)
        tally = Tally()
        started = time.monotonic()
        while tally.kills < args.kills and tally.runs < args.kills * 3:
            bad = tally.runs % 2 == 1
            kind = "rollback" if bad else "apply"
            aimed_revision = quietly_release(lab, refs, port=port, step=step, bad=bad)
            step += 1
            tally.runs += 1
            moment = rng.uniform(0, spans[kind])
            first_code, _ = run_once(lab, kill_after=moment)
            where = f"run {tally.runs} ({kind}, killed at {moment:.2f} s)"
            if first_code != -signal.SIGKILL:
                tally.finished_before_kill += 1
            else:
                tally.kills += 1
                tally.fractions[kind].append(moment / spans[kind])
                tally.last_steps[kind][kill_phase(lab.root / "once.log")] += 1
            aimed = {("web", "side", aimed_revision), ("web", "web", aimed_revision)}
            last_good = revisions(before)
            try:  # before the restart: the killed run's state.json
                killed_apps = tuple(sorted((a.name, a.revision) for a in saved(lab).apps))
                if killed_apps not in (last_good, (("web", aimed_revision),)):
                    tally.lost.append(f"{where}: after the kill state.json names {killed_apps}")
            except (OSError, ValueError) as exc:
                tally.lost.append(f"{where}: after the kill state.json unreadable: {exc}")
            second_code, _ = run_once(lab)
            now = observed(client, namespace)
            if set(keys(now)) not in ({*keys(before)}, aimed) or len(now) != 2:
                tally.mixed.append(f"{where}: containers {keys(now)}")
            elif not all_running(client, namespace):
                tally.mixed.append(f"{where}: not all containers running: {keys(now)}")
            if (second_code not in (0, 3) if bad else second_code != 0) or (
                not bad and set(keys(now)) != aimed
            ):
                said = text.one_line(restart_said(lab.root / "once.log"), limit=400)
                tally.not_converged.append(f"{where}: restart exited {second_code}: {said}")
            try:  # after the restart: no transaction open, apps as running, last good kept
                after = saved(lab)
                apps = tuple(sorted((a.name, a.revision) for a in after.apps))
                if after.pending is not None:
                    tally.lost.append(f"{where}: a transaction still open after the restart")
                if apps != revisions(now):
                    tally.lost.append(f"{where}: state.json {apps}, containers {revisions(now)}")
                if bad and apps != last_good:
                    tally.lost.append(f"{where}: last good {last_good} lost, state.json {apps}")
            except (OSError, ValueError) as exc:
                tally.lost.append(f"{where}: after the restart state.json unreadable: {exc}")
            before = now
            if tally.runs % 20 == 0:
                print(
                    f"  {tally.runs} runs, {tally.kills} killed, {len(tally.mixed)} mixed, "
                    f"{len(tally.lost)} lost, {time.monotonic() - started:.0f} s",
                    flush=True,
                )
        report(tally, time.monotonic() - started)
        return 0 if not (tally.mixed or tally.lost or tally.not_converged) else 1
    finally:
        remove_namespace(client, namespace)
        registry.close()
        client.close()
        lease.release()
        shutil.rmtree(tmp, ignore_errors=True)


def report(tally: Tally, elapsed: float) -> None:
    print(
        f"{tally.runs} changes in {elapsed:.0f} s: {tally.kills} runs killed by SIGKILL, "
        f"{tally.finished_before_kill} finished before their kill moment"
    )
    print(f"mixed states: {len(tally.mixed)}")
    print(f"lost last-good states: {len(tally.lost)}")
    print(f"restarts that did not finish the change: {len(tally.not_converged)}")
    for line in (tally.mixed + tally.lost + tally.not_converged)[:20]:
        print(f"  {line}")
    print("kill moments (fraction of the span, deciles; then where the run was, from its log):")
    for kind in ("apply", "rollback"):
        deciles = collections.Counter(min(int(f * 10), 9) for f in tally.fractions[kind])
        histogram = " ".join(f"{deciles[d]:3d}" for d in range(10))
        print(f"  {kind:8} ({len(tally.fractions[kind])} kills): {histogram}")
        steps = ", ".join(f"{event} {n}" for event, n in tally.last_steps[kind].most_common())
        print(f"    {steps}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    args = parser.parse_args(argv)
    # A plain kill must still stop the daemon, the registry and the containers we started.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    print(f"# SIGKILL soak, {datetime.now(UTC):%Y-%m-%d %H:%M}, {machine()}", flush=True)
    return soak(args)


if __name__ == "__main__":
    raise SystemExit(main())
