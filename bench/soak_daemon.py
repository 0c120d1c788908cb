"""Daemon soak: many cycles of a real `reconciler run`, its resources sampled from /proc.

Runs the installed `reconciler run` against a local fleet repo on the real engine (its own
`runtime.namespace`), with a short poll interval. Most cycles are unchanged; every
--change-every cycles a new signed release is committed that changes the app's revision (a new
image, and every fourth change one that exits, so the daemon also rolls back and holds a revision
back). Every --sample-every cycles it reads the daemon's RSS, open file descriptors and threads
from /proc, and counts what was written under `state_dir` (inotify on every directory there).

Prints each series' start, min, max, end and least-squares slope per 1,000 cycles, and FLAT or
NOT FLAT by this rule: the slope fitted over the second half of the run, taken over 10,000 cycles,
stays under 1 MB of RSS and under one file descriptor or thread. The first half is warm-up: the
first pulls, caches, allocator arenas, and the docker SDK's connection pools, which keep up to
25 idle sockets to the engine (one pool per API URL, the oldest closed beyond 25), so each of the
first changes leaves a few more open fds, up to that bound. Then the writes to `state_dir` per
unchanged cycle (a cycle in a sample block with no release committed in it) and what that makes
per day at a 60 s poll. --samples FILE also writes every sample as CSV.

Usage (as root, engine started or reused the way the tests do it; about 15 minutes):

    nice -n 10 .venv/bin/python -m bench.soak_daemon [--cycles 10000] [--poll 0.05s]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import ctypes.util
import io
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker

from bench.engine_bench import machine
from reconciler.fleet import lab_ca
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, remove_namespace
from testkit.engine import acquire
from testkit.images import ImageFactory, check_busybox
from testkit.registry import LocalRegistry

WARM_UP = 0.5  # fraction of the cycles left out of the slope (see the module docstring)
RSS_LIMIT_MB = 1.0  # growth per 10,000 cycles that still counts as flat
COUNT_LIMIT = 1.0  # fds, threads: growth per 10,000 cycles that still counts as flat
BAD_EVERY = 4  # every fourth change exits at once: a rollback and a held-back revision


# --- inotify on a directory tree -------------------------------------------------------------

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
WATCHED = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
WATCHED |= IN_CREATE | IN_DELETE
KINDS = {
    IN_CLOSE_WRITE: "file written",
    IN_MODIFY: "write()",
    IN_CREATE: "created",
    IN_DELETE: "deleted",
    IN_MOVED_TO: "renamed in",
    IN_ATTRIB: "attributes",
}
_EVENT = struct.Struct("iIII")


class TreeWatch:
    """Every change under a directory, new subdirectories included (Linux inotify via libc)."""

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}
        self.overflowed = False
        for directory, _subdirs, _files in os.walk(root):
            self._add(Path(directory))

    def _add(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, bytes(directory), WATCHED)
        if wd >= 0:  # a directory gone again before we watched it changes nothing we count
            self._dirs[wd] = directory

    def drain(self) -> Iterator[tuple[int, Path]]:
        """(event mask, path) of every change since the last drain."""
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    continue
                path = self._dirs.get(wd, Path("?")) / os.fsdecode(name)
                if mask & IN_CREATE and mask & IN_ISDIR:
                    self._add(path)
                yield mask, path

    def close(self) -> None:
        os.close(self._fd)


# --- the daemon and its numbers ----------------------------------------------------------------


def proc_sample(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, threads) of a live process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss / 1024, sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()), threads


def fd_kinds(pid: int) -> collections.Counter[str]:
    """What a process's open fds point at, by kind (`socket`, `pipe`, `anon_inode:[...]`) or,
    for files, by path with digits and temp names folded, so a leak shows what it is."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        kinds[re.sub(r"\[\d+\]|\d+|\.tmp-\w+", "#", target)] += 1
    return kinds


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0


@dataclass
class Block:
    """What was written under state_dir in one sample block, and whether a release came in it."""

    cycles: int
    changed: bool
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    paths: collections.Counter[str] = field(default_factory=collections.Counter)


class CycleCounter:
    """Counts `cycle.done` records in the daemon's JSON log as it grows."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._offset = 0
        self._partial = b""
        self.done = 0
        self.results: collections.Counter[str] = collections.Counter()

    def poll(self) -> int:
        try:
            with self._log.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.done
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b'"cycle.done"' in line:
                self.done += 1
                marker = b'"result": "'
                if marker in line:
                    start = line.index(marker) + len(marker)
                    self.results[line[start : line.index(b'"', start)].decode()] += 1
        return self.done


def run_soak(args: argparse.Namespace) -> int:
    lease = acquire()
    client = docker.DockerClient(base_url=lease.url, timeout=120)
    registry = LocalRegistry(client)
    tmp = Path(tempfile.mkdtemp(prefix="reconciler-soak-"))
    namespace = f"soak-daemon-{os.getpid()}"
    process = None
    try:
        images = ImageFactory(client, busybox=check_busybox())
        refs = {}
        for name, local in {
            "v1": images.httpd("soak-web-v1", "soak v1"),
            "v2": images.httpd("soak-web-v2", "soak v2"),
            "exits": images.exits("soak-exits", code=1),
        }.items():
            registry.push(local, f"soak/{name}:1")
            refs[name] = f"{registry.address}/soak/{name}:1"
        lab_ca.init(tmp / "lab-ca")
        lab = DeviceLab(
            tmp / "device",
            docker_host=lease.url,
            namespace=namespace,
            signer=LabSigner(tmp / "lab-ca"),
        )
        lab.write_config(
            health={"timeout": "4s", "stable_for": "0.5s"},
            source={"url": str(lab.fleet.root), "poll_interval": args.poll, "jitter": 0},
        )
        port = lab.free_port()
        changes = 0

        def publish() -> None:
            nonlocal changes
            bad = changes % BAD_EVERY == BAD_EVERY - 1
            image = refs["exits"] if bad else refs["v1" if changes % 2 == 0 else "v2"]
            web = {
                "name": "web",
                "image": image,
                "ports": [f"127.0.0.1:{port}:80"],
                "env": {"CHANGE": str(changes)},  # a new revision every time
                "restart": "no" if bad else "unless-stopped",
            }
            manifest = app_manifest("web", [web], selector={})
            with (  # `release` tells what it wrote; the soak prints only its figures
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                lab.publish({"web": manifest}, message=f"change {changes}")
            changes += 1

        publish()
        lab.state_dir.mkdir(parents=True, exist_ok=True)
        watch = TreeWatch(lab.state_dir)
        counter = CycleCounter(lab.daemon_log)
        process = lab.start_daemon()
        started = time.monotonic()
        samples: list[tuple[int, float, int, int]] = []
        blocks: list[Block] = []
        block = Block(cycles=0, changed=True)  # the first block holds the first apply
        next_sample = args.sample_every
        fds_first: collections.Counter[str] = collections.Counter()
        fds_now: collections.Counter[str] = collections.Counter()
        while True:
            done = counter.poll()
            if process.poll() is not None:
                print(f"daemon exited with {process.returncode}; log: {lab.daemon_log}")
                return 1
            if done >= next_sample:
                for mask, path in watch.drain():
                    for bit, kind in KINDS.items():
                        if mask & bit:
                            block.events[kind] += 1
                    if mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_CREATE):
                        name = str(path.relative_to(lab.state_dir))
                        block.paths[re.sub(r"\.tmp-\w+", ".tmp-*", name)] += 1
                block.cycles = done - sum(b.cycles for b in blocks)
                blocks.append(block)
                rss, fds, threads = proc_sample(process.pid)
                samples.append((done, rss, fds, threads))
                fds_now = fd_kinds(process.pid)
                fds_first = fds_first or fds_now
                if done >= args.cycles:
                    break
                changing = done // args.change_every > (done - block.cycles) // args.change_every
                if changing:
                    publish()
                block = Block(cycles=0, changed=changing)
                next_sample += args.sample_every
                if len(samples) % 10 == 0:
                    print(
                        f"  {done} cycles, {time.monotonic() - started:.0f} s: RSS {rss:.1f} MB, "
                        f"{fds} fds, {threads} threads",
                        flush=True,
                    )
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        watch.close()
        if args.samples:
            rows = [f"{c},{r:.3f},{f},{t}" for c, r, f, t in samples]
            args.samples.write_text("\n".join(["cycles,rss_mb,fds,threads", *rows]) + "\n")
        report(
            args,
            samples,
            blocks,
            counter,
            elapsed=elapsed,
            changes=changes,
            overflowed=watch.overflowed,
        )
        grown = fds_now - fds_first
        if grown:
            listing = ", ".join(f"{kind} +{n}" for kind, n in grown.most_common(8))
            print(f"  open fds that grew since the first sample: {listing}")
        return 0
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        remove_namespace(client, namespace)
        registry.close()
        client.close()
        lease.release()
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    args: argparse.Namespace,
    samples: list[tuple[int, float, int, int]],
    blocks: list[Block],
    counter: CycleCounter,
    *,
    elapsed: float,
    changes: int,
    overflowed: bool,
) -> None:
    cycles = samples[-1][0]
    results = ", ".join(f"{n} {r}" for r, n in counter.results.most_common())
    print(
        f"{cycles} cycles in {elapsed:.0f} s ({elapsed / cycles * 1000:.0f} ms each, poll "
        f"{args.poll}), {changes} releases committed; results: {results}"
    )
    warm = [s for s in samples if s[0] > cycles * WARM_UP]
    early = [s for s in samples if s[0] > cycles * 0.1]
    flat = True
    print(
        f"series (sampled every {args.sample_every} cycles; slope per 1,000 cycles fitted over "
        f"the second half, and for comparison over all but the first 10%):"
    )
    for index, name, unit, limit in (
        (1, "RSS", " MB", RSS_LIMIT_MB),
        (2, "open fds", "", COUNT_LIMIT),
        (3, "threads", "", COUNT_LIMIT),
    ):
        values = [s[index] for s in samples]
        per_1000 = slope([s[0] for s in warm], [s[index] for s in warm]) * 1000
        from_10 = slope([s[0] for s in early], [s[index] for s in early]) * 1000
        first_half = max(s[index] for s in samples if s[0] <= cycles * WARM_UP)
        ok = per_1000 * 10 < limit
        flat = flat and ok
        print(
            f"  {name:9} start {values[0]:g}{unit}, min {min(values):g}{unit}, max "
            f"{max(values):g}{unit} (first half {first_half:g}), end {values[-1]:g}{unit}; "
            f"slope {per_1000:+.4f}{unit} ({from_10:+.4f} from 10%) -> {per_1000 * 10:+.2f}{unit} "
            f"per 10,000 cycles, limit {limit:g}: {'flat' if ok else 'GROWING'}"
        )
    print(
        f"{'FLAT' if flat else 'NOT FLAT'} (rule: second-half slope x 10,000 cycles "
        f"< {RSS_LIMIT_MB:g} MB RSS, < {COUNT_LIMIT:g} fd, < {COUNT_LIMIT:g} thread)"
    )
    unchanged = [b for b in blocks if not b.changed]
    quiet_cycles = sum(b.cycles for b in unchanged)
    events: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    for b in unchanged:
        events.update(b.events)
        paths.update(b.paths)
    per_cycle = events["file written"] / quiet_cycles if quiet_cycles else 0.0
    changes_per_cycle = sum(events.values()) / quiet_cycles if quiet_cycles else 0.0
    print(
        f"state_dir writes over {quiet_cycles} unchanged cycles: {per_cycle:.2f} files written "
        f"per cycle -> {per_cycle * 1440:.0f} writes per day at a 60 s poll "
        f"({changes_per_cycle:.2f} inotify events per cycle in all"
        f"{'; inotify queue OVERFLOWED, counts are low' if overflowed else ''})"
    )
    if events:
        kinds = ", ".join(f"{kind} {n / quiet_cycles:.2f}" for kind, n in events.most_common())
        print(f"  per unchanged cycle: {kinds}")
        top = ", ".join(f"{p} {n / quiet_cycles:.2f}" for p, n in paths.most_common(6))
        print(f"  paths (written, created, renamed in or deleted) per unchanged cycle: {top}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--poll", default="0.05s", help="source.poll_interval (jitter 0)")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--change-every", type=int, default=500)
    parser.add_argument("--samples", type=Path, help="also write every sample here, as CSV")
    args = parser.parse_args(argv)
    # A plain kill must still stop the daemon, the registry and the containers we started.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    print(f"# daemon soak, {datetime.now(UTC):%Y-%m-%d %H:%M}, {machine()}", flush=True)
    return run_soak(args)


if __name__ == "__main__":
    raise SystemExit(main())
