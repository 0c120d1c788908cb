"""A simulated fleet of 10,000 devices polling a published tree (issue 13), and Git for comparison.

Every simulated device runs the device's real source code: a `StaticSource` (the conditional GET
of `latest.json` on its own kept-alive HTTPS connection, `ensure` fetching the release and its
bundle on a change) and the cycle's `Intake` (the verify-on-change path: release, bundle, every
pinned blob fetched, checked against its pin and parsed), each device with its own cache dir
(on tmpfs: the fsyncs of 10,000 caches on one disk would measure the disk, not the fleet). The
one thing replaced is the sigstore verification child: `CountingVerifier` counts calls and
returns the signer, because the signer's CPU is the device's, not the servers', and is
measured elsewhere (bench/engine_bench.py). Nothing is applied to an engine.

The servers are Debian's nginx on loopback, as the current user (testkit.nginx): an origin
serving the tree written by `reconciler publish` (signed with a lab CA) with README's cache
headers, and, in `cdn` mode, a `CacheTier` (nginx `proxy_cache`) in front of it standing in for
a CDN edge; devices speak HTTPS to whichever is in front. Time is compressed: a 6 s poll
stands for 60 s, and `latest.json`'s max-age (1 s) for 10 s.

Each run: all devices start, fetch release 1 and settle; then a steady window measures unchanged
polls (server CPU from /proc/<pid>/stat, latency as the device sees it, the simulator's own
lag behind its schedule, which shows it is not the bottleneck); then `reconciler publish`
writes release 2 and the run times how long until 50/99/100% of devices hold it, and reads from
the access logs what the origin served and the peak request rate at the front.

`--git` measures the comparison: devices asking a Git smart-HTTP server (`git http-backend`
under testkit's CGI server) for the branch head with `git ls-remote` (GitSource.head, a forked
git per poll) and with the in-process ref query of `reconciler.adapters.git_refs` (protocol v2
`ls-refs` on a kept connection, what GitSource uses by default); fewer devices (the device side
of ls-remote forks), server CPU per poll extrapolated to a fleet. The server side forks
`git http-backend` per request either way: that is the price of Git over HTTP.

    .venv/bin/python -m bench.fleet_sim                     # the default matrix, medians of 3
    .venv/bin/python -m bench.fleet_sim --scenarios cdn --runs 1 --devices 2000
    .venv/bin/python -m bench.fleet_sim --git
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import io
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from reconciler.adapters.git_source import GitSource
from reconciler.adapters.static_source import StaticSource
from reconciler.core import backoff, published, release
from reconciler.device.intake import Intake
from reconciler.errors import VerificationError
from reconciler.fleet import lab_ca, publish, release_verb
from reconciler.ports import Signer
from testkit.fleet_repos import GIT_ENV, FleetRepo, make_repo, manifest
from testkit.loopback import free_port
from testkit.nginx import BENCH_LOG_FORMAT, CacheTier, Nginx, TestCA, tree_cache_headers

COMPRESSION = 10  # a 6 s simulated poll stands for a 60 s one
IDENTITY = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.example.test"
APPS = 5
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


# --- the fleet repo and its published tree --------------------------------------------------------


def app_text(name: str, tag: str) -> str:
    """An app manifest of a realistic size (~1 KB: the comment stands for ports, env, mounts)."""
    body = manifest(name, image=f"registry.example.test/{name}:{tag}")
    padding = "".join(f"# {name} configuration line {i:02d} {'.' * 40}\n" for i in range(14))
    return body + padding


class Fleet:
    """A fleet repo with APPS apps, releases signed with a lab CA, published into `tree`."""

    def __init__(self, root: Path, tree: Path) -> None:
        self.ca = root / "ca"
        lab_ca.init(self.ca)
        self.repo = FleetRepo(root / "fleet")
        self.tree = tree
        self.release_number = 0

    def release(self, tags: dict[str, str]) -> None:
        """Commit the apps on `tags`, release and sign, commit, publish into the tree."""
        for name, tag in tags.items():
            self.repo.write(f"apps/{name}/app.yaml", app_text(name, tag))
        self.repo.commit("apps")
        quiet = io.StringIO()
        code, data = release_verb.write_release(
            self.repo.root, expires_in=30 * 86400, out=quiet, err=quiet
        )
        assert code == 0 and data is not None, quiet.getvalue()
        bundle = lab_ca.sign(self.ca, data, identity=IDENTITY, issuer=ISSUER)
        self.repo.write(release.BUNDLE_PATH, bundle)
        self.repo.commit("release")
        # The signature was made just now by the lab CA; the devices' verifier is a counter.
        code = publish.publish(self.repo.root, self.tree, None, out=quiet, err=quiet)
        assert code == 0, quiet.getvalue()
        self.release_number += 1

    def latest(self) -> published.Latest:
        return published.parse_latest((self.tree / published.LATEST).read_bytes())


# --- one simulated device -------------------------------------------------------------------------


class CountingVerifier:
    """Stands in for the sigstore verification child: counts the releases it was asked about.

    The signature check costs the device CPU once per new release and the servers nothing; it
    is not what this benchmark measures, so it is a counter here.
    """

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> Signer:
        self.calls += 1
        if not bundle:
            raise VerificationError(f"{file}: no bundle", reason="missing_signature")
        return Signer(identity=IDENTITY, issuer=ISSUER)


class StaticDevice:
    """The fetch and verify steps of one device's cycle (SPEC 3.2 steps 1-2) on the real code."""

    def __init__(self, cache_dir: Path, url: str) -> None:
        self.source = StaticSource(cache_dir=cache_dir, urls=[url], timeout=30.0)
        self.verifier = CountingVerifier()
        self.intake = Intake(self.source, self.verifier, allow_unsigned=False)
        self.held: str | None = None

    def poll(self) -> str | None:
        """One cycle's fetch and intake, as cycle.Reconciler runs them; the new commit or None."""
        head = self.source.head()
        if head.commit == self.held:
            return None  # an unchanged poll: a 304, nothing read again
        self.source.ensure(head.commit, head.remote)
        trusted, _content = self.intake.read(head.commit)
        assert len(trusted.files) == APPS
        self.held = head.commit
        return head.commit

    def close(self) -> None:
        self.source.close()


class GitDevice:
    """A device on the Git source asking for the branch head: `GitSource.head()` with the
    in-process ref query (`git_refs`: protocol v2 `ls-refs` with `ref-prefix` on a kept
    connection), or with `ref_query=False` today's forked `git ls-remote` per poll."""

    def __init__(self, cache_dir: Path, url: str, *, ref_query: bool) -> None:
        self.source = GitSource(cache_dir=cache_dir, urls=[url], branch="main", ref_query=ref_query)
        self.held: str | None = None

    def poll(self) -> str | None:
        head = self.source.head()
        changed = head.commit != self.held
        self.held = head.commit
        return head.commit if changed else None

    def close(self) -> None:
        self.source.close()


DEVICE_KINDS: dict[str, Callable[[Path, str], StaticDevice | GitDevice]] = {
    "static": StaticDevice,
    "git-ls-remote": partial(GitDevice, ref_query=False),
    "git-ref-query": partial(GitDevice, ref_query=True),
}


# --- a process of many devices --------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    kind: str
    url: str
    first: int
    count: int
    interval: float
    jitter: float
    together: bool  # every device starts at the same instant (a fleet back from a power cut)
    threads: int
    cache_root: str
    ca_file: str
    start_at: float  # time.monotonic() (CLOCK_MONOTONIC: one clock for every process)


@dataclass
class WorkerStats:
    polls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    changes: list[tuple[float, str]] = field(default_factory=list)  # (when, commit)
    cpu: float = 0.0


def worker_main(conn: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    """Runs `spec.count` devices on a schedule with `spec.threads` threads; answers `conn`."""
    os.environ["SSL_CERT_FILE"] = spec.ca_file
    make = DEVICE_KINDS[spec.kind]
    devices = [
        make(Path(spec.cache_root) / f"d{spec.first + i}", spec.url) for i in range(spec.count)
    ]
    rng = random.Random(spec.first)
    due = [
        (spec.start_at + (0.0 if spec.together else rng.uniform(0, spec.interval)), i)
        for i in range(spec.count)
    ]
    heapq.heapify(due)
    wake = threading.Condition()
    stats = WorkerStats()
    stop = threading.Event()

    def run() -> None:
        """Take the device due first, wait for its time, poll it, schedule its next poll: no
        scheduler thread and no hand-off, one wake-up per poll."""
        while True:
            with wake:
                while True:
                    if stop.is_set():
                        return
                    now = time.monotonic()
                    if due and due[0][0] <= now:
                        when, index = heapq.heappop(due)
                        break
                    wake.wait(timeout=min(0.5, due[0][0] - now) if due else 0.5)
            started = time.monotonic()
            try:
                changed = devices[index].poll()
            except Exception as exc:
                changed = None
                error = f"{type(exc).__name__}: {str(exc)[:120]}"
            else:
                error = ""
            ended = time.monotonic()
            with wake:
                stats.polls += 1
                stats.lags.append(started - when)
                stats.latencies.append(ended - started)
                if error:
                    stats.errors[error] += 1
                if changed is not None:
                    stats.changes.append((ended, changed))
                # The daemon sleeps a jittered interval after each cycle. Counted from when the
                # poll was due plus how long it took, not from when it ended: the simulator's
                # own lag (its start-up backlog) must not bunch up the fleet's phases. A device
                # more than a whole interval behind starts afresh from now instead of polling
                # again at once to catch up, which no daemon does.
                pause = backoff.jittered(spec.interval, jitter=spec.jitter, rng=rng)
                nxt = when + (ended - started) + pause
                if nxt < ended:
                    nxt = ended + pause
                heapq.heappush(due, (nxt, index))

    # Thousands of long-lived objects: a full collection now and then would be the
    # simulator's cost, not a device's (a device holds one source, not thousands).
    gc.collect()
    gc.freeze()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(spec.threads)]
    for thread in threads:
        thread.start()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == "stop":
            break
        with wake:  # "stats": everything since the last "stats", then start afresh
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats.cpu = usage.ru_utime + usage.ru_stime
            conn.send(stats)
            stats = WorkerStats()
    stop.set()
    with wake:
        wake.notify_all()
    for thread in threads:
        thread.join(timeout=30)
    for device in devices:
        device.close()
    conn.send("stopped")


class Simulator:
    """`devices` devices in `processes` processes, each with `threads` polling threads."""

    def __init__(
        self,
        *,
        kind: str,
        url: str,
        devices: int,
        processes: int,
        threads: int,
        interval: float,
        jitter: float,
        together: bool,
        cache_root: Path,
        ca_file: Path,
    ) -> None:
        context = multiprocessing.get_context("fork")
        start_at = time.monotonic() + 1.0 + devices / 4000  # after every process built its devices
        self.workers: list[tuple[multiprocessing.process.BaseProcess, object]] = []
        share = -(-devices // processes)
        for first in range(0, devices, share):
            spec = WorkerSpec(
                kind=kind,
                url=url,
                first=first,
                count=min(share, devices - first),
                interval=interval,
                jitter=jitter,
                together=together,
                threads=threads,
                cache_root=str(cache_root),
                ca_file=str(ca_file),
                start_at=start_at,
            )
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(child, spec), daemon=True)
            process.start()
            self.workers.append((process, parent))
        for _, conn in self.workers:
            assert conn.recv() == "ready"  # type: ignore[attr-defined]
        self.start_at = start_at
        self.cpu_before = 0.0

    def stats(self) -> WorkerStats:
        """Everything every process saw since the last call."""
        merged = WorkerStats()
        for _, conn in self.workers:
            conn.send("stats")  # type: ignore[attr-defined]
        cpu = 0.0
        for _, conn in self.workers:
            part: WorkerStats = conn.recv()  # type: ignore[attr-defined]
            merged.polls += part.polls
            merged.errors.update(part.errors)
            merged.latencies += part.latencies
            merged.lags += part.lags
            merged.changes += part.changes
            cpu += part.cpu
        merged.cpu, self.cpu_before = cpu - self.cpu_before, cpu
        return merged

    def stop(self) -> None:
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send("stop")  # type: ignore[attr-defined]
        for process, conn in self.workers:
            with contextlib.suppress(OSError, EOFError):
                if conn.poll(60):  # type: ignore[attr-defined]
                    conn.recv()  # type: ignore[attr-defined]
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


# --- measuring ------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class LogLine:
    when: float
    status: int
    uri: str
    size: int
    cache: str
    took: float  # nginx's $request_time, seconds (ms resolution)


def read_log(path: Path, since: float = 0.0) -> list[LogLine]:
    """BENCH_LOG_FORMAT lines written at or after `since` (wall clock, as nginx's $msec)."""
    lines: list[LogLine] = []
    if not path.exists():
        return lines
    for raw in path.read_text().splitlines():
        when, status, _method, uri, size, cache, took = raw.split(" ")
        if float(when) >= since:
            lines.append(LogLine(float(when), int(status), uri, int(size), cache, float(took)))
    return lines


def peak_rate(times: list[float], bucket: float = 0.1) -> float:
    """The highest request rate (per second) over `bucket`-long slices."""
    if not times:
        return 0.0
    counts = Counter(int(t / bucket) for t in times)
    return max(counts.values()) / bucket


@dataclass
@dataclass(frozen=True)
class Scenario:
    """One kind of run: what the devices talk to, how their polls are spread, what is measured."""

    front: str  # "direct": devices -> origin; "cdn": devices -> cache tier -> origin
    jitter: float
    together: bool  # every device starts at the same instant (a fleet back from a power cut)
    storm: bool  # False: the steady window of unchanged polls; True: a new release and its storm
    devices: int | None = None  # None: --devices


SCENARIOS = {
    "steady-direct": Scenario("direct", 0.1, together=False, storm=False),
    "steady-cdn": Scenario("cdn", 0.1, together=False, storm=False),
    "storm-cdn": Scenario("cdn", 0.1, together=False, storm=True),
    "storm-direct": Scenario("direct", 0.1, together=False, storm=True),
    "storm-together-j0": Scenario("cdn", 0.0, together=True, storm=True, devices=1000),
    "storm-together-j0.1": Scenario("cdn", 0.1, together=True, storm=True, devices=1000),
}


@dataclass
class RunResult:
    name: str
    devices: int
    interval: float
    scenario: Scenario
    steady_polls: int = 0
    steady_seconds: float = 0.0
    origin_requests: int = 0
    origin_cpu_per_poll_ms: float = float("nan")
    cache_cpu_per_poll_ms: float = float("nan")
    sim_cpu_per_poll_ms: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    latest_max_age: int = 0
    steady_wall: tuple[float, float] = (0.0, 0.0)
    origin_rss_mb: float = float("nan")
    front_took_p99_ms: float = float("nan")
    cache_rss_mb: float = float("nan")
    release_wall: float = 0.0
    storm_50_s: float = float("nan")
    storm_99_s: float = float("nan")
    storm_100_s: float = float("nan")
    storm_held: int = 0
    storm_origin_cpu_s: float = float("nan")
    storm_cache_cpu_s: float = float("nan")
    storm_sim_cpu_s: float = float("nan")
    verifier_calls: int = 0
    origin_storm_bytes: int = 0
    origin_storm_files: dict[str, int] = field(default_factory=dict)
    new_files_bytes: int = 0
    front_storm_bytes: int = 0
    front_peak_rps: float = float("nan")
    front_peak_fetch_rps: float = float("nan")
    origin_peak_rps: float = float("nan")


def settle(sim: Simulator, devices: int, commit: str, timeout: float) -> WorkerStats:
    """Wait until every device holds `commit`; what the processes saw meanwhile."""
    total = WorkerStats()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        part = sim.stats()
        total.polls += part.polls
        total.errors.update(part.errors)
        total.changes += part.changes
        total.cpu += part.cpu
        if sum(1 for _, c in total.changes if c == commit) >= devices:
            break
    return total


def run_static(args: argparse.Namespace, name: str, scenario: Scenario) -> RunResult:
    """One run: start the servers and the fleet, settle on release 1, then measure."""
    devices = scenario.devices or args.devices
    interval = args.storm_interval if scenario.storm else args.interval
    max_age = args.storm_latest_max_age if scenario.storm else args.latest_max_age
    result = RunResult(name, devices, interval, scenario)
    result.latest_max_age = max_age
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as scratch:
        root = Path(scratch)
        cache_root = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=SHM))
        try:
            tree = root / "public"
            tree.mkdir()
            fleet = Fleet(root / "repo", tree)
            fleet.release({f"app{i}": "1.0" for i in range(APPS)})
            tls = TestCA(root / "tls")
            connections = devices + 1024  # one kept-alive connection per device, and upstreams
            origin = Nginx(
                root / "origin",
                tree,
                tls=tls,
                extra=tree_cache_headers(max_age),
                worker_connections=connections,
                log_format=BENCH_LOG_FORMAT,
            ).start()
            cache: CacheTier | None = None
            try:
                if scenario.front == "cdn":
                    cache = CacheTier(
                        root / "cache", origin.http_url, tls=tls, worker_connections=connections
                    )
                    cache.start()
                sim = Simulator(
                    kind="static",
                    url=(cache or origin).https_url,
                    devices=devices,
                    processes=args.processes,
                    threads=args.threads,
                    interval=interval,
                    jitter=scenario.jitter,
                    together=scenario.together,
                    cache_root=cache_root,
                    ca_file=tls.ca_file,
                )
                try:
                    first = fleet.latest().sha256
                    start = settle(sim, devices, first, timeout=interval * 3 + devices / 100)
                    held = sum(1 for _, c in start.changes if c == first)
                    if held < devices:
                        raise RuntimeError(
                            f"only {held} of {devices} devices took release 1: {start.errors}"
                        )
                    if scenario.storm:
                        measure_storm(sim, fleet, origin, cache, result)
                    else:
                        measure_steady(args, sim, origin, cache, result)
                finally:
                    sim.stop()
            finally:
                if cache is not None:
                    cache.stop()
                origin.stop()  # flushes the access logs
            if scenario.storm:
                storm_logs(origin, cache, result)
            else:
                since, until = result.steady_wall
                lines = [x for x in read_log(origin.access_log, since) if x.when < until]
                result.origin_requests = len(lines)
                if cache is not None:
                    lines = [x for x in read_log(cache.access_log, since) if x.when < until]
                result.front_took_p99_ms = quantile([x.took for x in lines], 0.99) * 1000
        finally:
            shutil.rmtree(cache_root, ignore_errors=True)
    return result


def measure_steady(
    args: argparse.Namespace,
    sim: Simulator,
    origin: Nginx,
    cache: CacheTier | None,
    result: RunResult,
) -> None:
    """Unchanged polls over `--steady` intervals, once the start-up fetches drained out."""
    time.sleep(result.interval)
    sim.stats()
    origin_cpu, cache_cpu = origin.cpu_seconds(), cache.cpu_seconds() if cache else 0.0
    since = time.time()
    began = time.monotonic()
    time.sleep(args.steady * result.interval)
    steady = sim.stats()
    until = time.time()
    result.steady_seconds = time.monotonic() - began
    result.steady_polls = steady.polls
    result.origin_cpu_per_poll_ms = (origin.cpu_seconds() - origin_cpu) / steady.polls * 1000
    if cache is not None:
        result.cache_cpu_per_poll_ms = (cache.cpu_seconds() - cache_cpu) / steady.polls * 1000
    result.sim_cpu_per_poll_ms = steady.cpu / steady.polls * 1000
    result.latency_p50_ms = quantile(steady.latencies, 0.5) * 1000
    result.latency_p99_ms = quantile(steady.latencies, 0.99) * 1000
    result.lag_p99_ms = quantile(steady.lags, 0.99) * 1000
    result.errors = dict(steady.errors)
    result.steady_wall = (since, until)
    # Memory with every device's connection open: what a connection costs the server.
    result.origin_rss_mb = rss_mb(origin.pid)
    if cache is not None:
        result.cache_rss_mb = rss_mb(cache.pid)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_storm(
    sim: Simulator,
    fleet: Fleet,
    origin: Nginx,
    cache: CacheTier | None,
    result: RunResult,
) -> None:
    """`reconciler publish` writes release 2; how long until the fleet holds it, at what cost."""
    sim.stats()
    before = {p.relative_to(fleet.tree) for p in fleet.tree.rglob("*") if p.is_file()}
    origin_cpu, cache_cpu = origin.cpu_seconds(), cache.cpu_seconds() if cache else 0.0
    result.release_wall = time.time()
    fleet.release({"app0": "2.0", "app1": "2.0"})
    published_at = time.monotonic()
    after = {p.relative_to(fleet.tree) for p in fleet.tree.rglob("*") if p.is_file()}
    result.new_files_bytes = sum(
        (fleet.tree / p).stat().st_size for p in (after - before) | {Path(published.LATEST)}
    )
    second = fleet.latest().sha256
    storm = settle(sim, result.devices, second, timeout=result.interval * 4)
    result.storm_origin_cpu_s = origin.cpu_seconds() - origin_cpu
    if cache is not None:
        result.storm_cache_cpu_s = cache.cpu_seconds() - cache_cpu
    result.storm_sim_cpu_s = storm.cpu
    times = sorted(t - published_at for t, c in storm.changes if c == second)
    result.storm_held = len(times)
    for q, name in ((0.5, "storm_50_s"), (0.99, "storm_99_s"), (1.0, "storm_100_s")):
        need = max(1, math.ceil(q * result.devices))
        if len(times) >= need:
            setattr(result, name, times[need - 1])
    result.errors = {f"storm: {k}": v for k, v in storm.errors.items()}


def storm_logs(origin: Nginx, cache: CacheTier | None, result: RunResult) -> None:
    """What the origin and the front served from the release on (logs flushed on nginx's exit)."""
    origin_lines = read_log(origin.access_log, result.release_wall)
    result.origin_storm_bytes = sum(line.size for line in origin_lines)
    files: dict[str, int] = defaultdict(int)
    for line in origin_lines:
        if line.status == 200:
            files[line.uri.rsplit("/", 1)[0] + "/" if line.uri.count("/") > 1 else line.uri] += 1
    result.origin_storm_files = dict(files)
    result.origin_peak_rps = peak_rate([line.when for line in origin_lines])
    front_lines = read_log(cache.access_log, result.release_wall) if cache else origin_lines
    result.front_storm_bytes = sum(line.size for line in front_lines)
    result.front_took_p99_ms = quantile([line.took for line in front_lines], 0.99) * 1000
    result.front_peak_rps = peak_rate([line.when for line in front_lines])
    result.front_peak_fetch_rps = peak_rate(
        [line.when for line in front_lines if line.uri != "/" + published.LATEST]
    )


# --- Git, for comparison --------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU of `pid` and of the children it waited for (git http-backend, upload-pack)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_git(args: argparse.Namespace, kind: str, devices: int) -> RunResult:
    """`devices` devices asking a smart-HTTP Git server for the branch head, unchanged polls."""
    result = RunResult(kind, devices, args.interval, Scenario("git", 0.1, False, False))
    with tempfile.TemporaryDirectory(prefix="fleet-sim-git-") as scratch:
        root = Path(scratch)
        repo = make_repo(root / "git" / "fleet.git")
        repo.commit({"apps/web/app.yaml": app_text("web", "1.0").encode()})
        port = free_port()
        here = str(Path(__file__).resolve().parent.parent)
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; from testkit.git_server import GitHttpServer; "
                f"GitHttpServer({str(root / 'git')!r}, port={port}).start(); "
                "time.sleep(1e9)",
            ],
            env={**os.environ, **GIT_ENV, "PYTHONPATH": here},
        )
        try:
            time.sleep(1.0)
            sim = Simulator(
                kind=kind,
                url=f"http://127.0.0.1:{port}/fleet.git",
                devices=devices,
                processes=args.processes,
                threads=args.threads,
                interval=args.interval,
                jitter=0.1,
                together=False,
                cache_root=root / "devices",
                ca_file=Path(os.devnull),
            )
            try:
                time.sleep(args.interval * 2)
                sim.stats()
                cpu = proc_cpu(server.pid)
                began = time.monotonic()
                time.sleep(args.steady * args.interval)
                steady = sim.stats()
                result.steady_seconds = time.monotonic() - began
                result.steady_polls = steady.polls
                result.origin_cpu_per_poll_ms = (proc_cpu(server.pid) - cpu) / steady.polls * 1000
                result.sim_cpu_per_poll_ms = steady.cpu / steady.polls * 1000
                result.latency_p50_ms = quantile(steady.latencies, 0.5) * 1000
                result.latency_p99_ms = quantile(steady.latencies, 0.99) * 1000
                result.lag_p99_ms = quantile(steady.lags, 0.99) * 1000
                result.errors = dict(steady.errors)
            finally:
                sim.stop()
        finally:
            server.terminate()
            server.wait()
    return result


# --- the report -----------------------------------------------------------------------------------


def per_day(ms_per_poll: float, interval: float = 60.0) -> float:
    """CPU seconds per device per day at a real `interval` poll."""
    return ms_per_poll / 1000 * 86400 / interval


def devices_per_core(ms_per_poll: float, interval: float = 60.0) -> float:
    return interval / (ms_per_poll / 1000) if ms_per_poll > 0 else float("inf")


def median_of(results: list[RunResult], name: str) -> float:
    values = [float(getattr(r, name)) for r in results]
    values = [v for v in values if not math.isnan(v)]  # NaN: not measured, or not reached
    return statistics.median(values) if values else float("nan")


NUMBERS = [name for name, f in RunResult.__dataclass_fields__.items() if f.type in ("int", "float")]


def report(results: list[RunResult]) -> dict[str, object]:
    m = {name: median_of(results, name) for name in NUMBERS}
    r0 = results[0]
    s = r0.scenario
    start = "all start together" if s.together else "starts spread over one interval"
    poll = f"{r0.interval:g} s" + (
        f" (stands for {r0.interval * COMPRESSION:g} s)" if r0.interval < 60 else ""
    )
    print(
        f"\n== {r0.name}: {r0.devices:,} devices, poll {poll}, jitter {s.jitter}, {start}, "
        f"latest.json max-age {r0.latest_max_age} s; median of {len(results)} run(s)"
    )
    if not s.storm:
        rate = m["steady_polls"] / m["steady_seconds"]
        polls, took = m["steady_polls"], m["steady_seconds"]
        print(f"  {polls:,.0f} unchanged polls in {took:.1f} s ({rate:,.0f}/s)")
        who = "server (handler + git children)" if s.front == "git" else "origin"
        if s.front == "cdn":
            who = "origin (behind the cache tier: a few revalidations, in 10 ms CPU ticks)"
        print(
            f"  {who} CPU per device poll: {m['origin_cpu_per_poll_ms']:.4f} ms = "
            f"{devices_per_core(m['origin_cpu_per_poll_ms']):,.0f} devices/core at 60 s polls, "
            f"{per_day(m['origin_cpu_per_poll_ms']):.3f} CPU s per device per day"
        )
        if s.front != "git":
            print(
                f"  server memory with {r0.devices:,} kept-alive connections: origin "
                f"{m['origin_rss_mb']:.0f} MB, cache tier {m['cache_rss_mb']:.0f} MB"
            )
        if s.front == "cdn":
            print(
                f"  origin requests in the window: {m['origin_requests']:.0f} (revalidations of "
                f"latest.json); cache tier CPU per poll: {m['cache_cpu_per_poll_ms']:.4f} ms = "
                f"{devices_per_core(m['cache_cpu_per_poll_ms']):,.0f} devices/core at 60 s"
            )
        print(
            f"  poll latency on the device: p50 {m['latency_p50_ms']:.2f} ms, p99 "
            f"{m['latency_p99_ms']:.2f} ms; simulator: {m['sim_cpu_per_poll_ms']:.3f} ms CPU per "
            f"poll, p99 lag behind schedule {m['lag_p99_ms']:.1f} ms; the front's p99 request "
            f"time {m['front_took_p99_ms']:.0f} ms"
        )
    else:
        worst = min(r.storm_held for r in results)
        print(
            f"  release storm: 50% hold it after {m['storm_50_s']:.1f} s, 99% after "
            f"{m['storm_99_s']:.1f} s, 100% after {m['storm_100_s']:.1f} s "
            f"({worst:,}/{r0.devices:,} held it in the worst run)"
        )
        print(
            f"  origin served {m['origin_storm_bytes']:,.0f} bytes for {m['new_files_bytes']:,.0f}"
            f" bytes of new files ({m['origin_storm_bytes'] / max(1, m['new_files_bytes']):.2f}"
            f" copies); its 200s: {r0.origin_storm_files}; peak {m['origin_peak_rps']:,.0f} req/s"
        )
        print(
            f"  the front served {m['front_storm_bytes']:,.0f} bytes, peak "
            f"{m['front_peak_rps']:,.0f} req/s (100 ms slices), of release/bundle/blob "
            f"{m['front_peak_fetch_rps']:,.0f} req/s; its p99 request time "
            f"{m['front_took_p99_ms']:.0f} ms"
        )
        print(
            f"  CPU during the storm: origin {m['storm_origin_cpu_s']:.2f} s, cache tier "
            f"{m['storm_cache_cpu_s']:.2f} s, simulated devices {m['storm_sim_cpu_s']:.1f} s "
            f"({m['storm_sim_cpu_s'] / r0.devices * 1000:.1f} ms per device)"
        )
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    if errors:
        print(f"  errors: {dict(errors.most_common(5))}")
    return {"name": r0.name, "devices": r0.devices, "interval": r0.interval, **m,
            "errors": dict(errors), "origin_files": r0.origin_storm_files}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="polling threads per process")
    parser.add_argument("--interval", type=float, default=6.0, help="steady-state poll (s)")
    parser.add_argument("--storm-interval", type=float, default=60.0, help="storm runs' poll (s)")
    parser.add_argument("--latest-max-age", type=int, default=1, help="latest.json max-age (s)")
    parser.add_argument("--storm-latest-max-age", type=int, default=1, help="... in storm runs")
    parser.add_argument("--steady", type=float, default=3.0, help="steady window, in polls")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--git", action="store_true", help="the Git comparison instead")
    parser.add_argument("--git-devices", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, loopback; nginx {nginx_version()}; "
        f"Linux {os.uname().release}; Python {sys.version.split()[0]}"
    )
    summaries = []
    if args.git:
        for kind, devices in (("git-ls-remote", args.git_devices),
                              ("git-ref-query", args.git_devices * 5)):  # fmt: skip
            summaries.append(report([run_git(args, kind, devices) for _ in range(args.runs)]))
    else:
        for name in args.scenarios.split(","):
            runs = [run_static(args, name, SCENARIOS[name]) for _ in range(args.runs)]
            summaries.append(report(runs))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2, default=str))


def nginx_version() -> str:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().rsplit("/", 1)[-1]


if __name__ == "__main__":
    main()
