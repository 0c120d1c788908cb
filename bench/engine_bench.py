"""Engine benchmark (issue: device engine): prints numbers for the README's Performance section.

Measures, against the real engine, a local registry and a local fleet repo (all on loopback):

1. CPU and wall time of an unchanged cycle, with 1 app and with 100 apps (200 containers):
   the reconciler's own CPU, and separately the CPU of its git child (`ls-remote`).
2. Resident memory of `reconciler run` after 1,000 unchanged cycles (driven by `sync`).
3. Commit -> new content served, with `reconciler sync` right after the commit.
4. How long the app answers nothing while `reconciler once` replaces its image.
5. Failure known -> previous containers serving again, for an image that exits.
6. A new revision whose `/healthz` answers 404 (`--only rollback404`): new container started ->
   previous revision serving again, SPEC health defaults and `health.timeout: 120s`.

Every number is the median of --runs runs (default 5). Usage (as root, engine started or reused
the way the tests do it):

    .venv/bin/python -m bench.engine_bench [--runs 5] [--cycles 1000] [--skip-100]
        [--engine docker|podman]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker

from reconciler import logs, model
from reconciler.device import wiring
from reconciler.fleet import lab_ca
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, http_get, remove_namespace
from testkit.engine import DOCKER, PODMAN, acquire
from testkit.git_server import GitDaemon
from testkit.images import ImageFactory, check_busybox
from testkit.registry import LocalRegistry


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cpus, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


class Bench:
    def __init__(self, runs: int, cycles: int, engine: str = DOCKER) -> None:
        self.runs = runs
        self.cycles = cycles
        self.lease = acquire(kind=engine)
        self.client = docker.DockerClient(base_url=self.lease.url, timeout=120)
        self.images = ImageFactory(self.client, busybox=check_busybox())
        self.registry = LocalRegistry(self.client)
        self.tmp = Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
        self.namespaces: list[str] = []
        self.refs: dict[str, str] = {}
        for version in ("v1", "v2"):
            local = self.images.httpd(f"bench-web-{version}", f"bench {version}")
            self.registry.push(local, f"bench/web:{version}")
            self.refs[version] = f"{self.registry.address}/bench/web:{version}"
        self.registry.push(self.images.sleeper("bench-sleeper"), "bench/sleeper:1")
        self.refs["sleeper"] = f"{self.registry.address}/bench/sleeper:1"

    def lab(self, name: str) -> DeviceLab:
        namespace = f"bench-{name}-{os.getpid()}"
        self.namespaces.append(namespace)
        return DeviceLab(self.tmp / name, docker_host=self.lease.url, namespace=namespace)

    def close(self) -> None:
        for namespace in self.namespaces:
            remove_namespace(self.client, namespace)
        self.registry.close()
        self.client.close()
        self.lease.release()

    # --- 1. unchanged cycles ---------------------------------------------------------------

    def unchanged_cycle(self, apps: int) -> tuple[list[float], list[float], list[float]]:
        lab = self.lab(f"unchanged{apps}")
        manifests: dict[str, str | None] = {}
        for i in range(apps):
            if apps == 1:
                containers = [
                    {
                        "name": "web",
                        "image": self.refs["v1"],
                        "ports": [f"127.0.0.1:{lab.free_port()}:80"],
                    }
                ]
            else:
                containers = [
                    {"name": "a", "image": self.refs["sleeper"]},
                    {"name": "b", "image": self.refs["sleeper"]},
                ]
            manifests[f"app{i:03d}"] = app_manifest(f"app{i:03d}", containers)
        lab.publish(manifests)
        settings = wiring.load_settings(str(lab.config_path))
        cpu, wall, child = [], [], []
        with wiring.open_device(settings) as dev:
            first = dev.reconciler.cycle()
            assert first.result == "converged", first.message
            dev.reconciler.cycle()  # warm: caches filled, crash-loop bookkeeping settled
            for _ in range(self.runs * 4):
                children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_before, wall_before = time.process_time(), time.perf_counter()
                outcome = dev.reconciler.cycle()
                cpu.append(time.process_time() - cpu_before)
                wall.append(time.perf_counter() - wall_before)
                children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                child.append(
                    children_after.ru_utime
                    + children_after.ru_stime
                    - children_before.ru_utime
                    - children_before.ru_stime
                )
                assert outcome.result == "unchanged", outcome.message
        return cpu, wall, child

    # --- 2. daemon RSS after many cycles ------------------------------------------------------

    def daemon_rss(self) -> tuple[float, float, int]:
        """(RSS MB after the first cycle, RSS MB after `cycles` cycles, cycles counted).

        The release is signed by a lab CA, so the first cycle is a verified apply: the sigstore
        verifier runs in its child process and must leave nothing in the daemon."""
        lab = self.lab("rss")
        ca = self.tmp / "lab-ca"
        if not ca.exists():
            lab_ca.init(ca)
        lab.signer = LabSigner(ca)
        lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
        lab.write_config()
        port = lab.free_port()
        web = {"name": "web", "image": self.refs["v1"], "ports": [f"127.0.0.1:{port}:80"]}
        lab.publish({"web": app_manifest("web", [web])})
        process = lab.start_daemon()
        try:
            wait_for(lambda: cycles_done(lab) >= 1, "first cycle")
            first = rss_mb(process.pid)
            done = cycles_done(lab)
            while done < self.cycles:
                # The signal `reconciler sync` sends, without starting a CLI process each time.
                os.kill(process.pid, signal.SIGUSR1)
                wait_for(lambda d=done: cycles_done(lab) > d, "a cycle after sync")
                done = cycles_done(lab)
            return first, rss_mb(process.pid), done
        finally:
            process.terminate()
            process.wait(timeout=60)

    # --- 3. commit -> served -----------------------------------------------------------------

    def commit_to_served(self) -> list[float]:
        lab = self.lab("latency")
        port = lab.free_port()
        web = {"name": "web", "image": self.refs["v1"], "ports": [f"127.0.0.1:{port}:80"]}
        lab.publish({"web": app_manifest("web", [web])})
        # Served by `git daemon`, a URL the daemon does not watch: only `sync` wakes it.
        server = GitDaemon(lab.root).start()
        lab.source_url = server.url("fleet")
        lab.write_config()
        process = lab.start_daemon()
        timings = []
        try:
            wait_for(lambda: http_get(port, timeout=0.2) == "bench v1", "first apply")
            version = "v1"
            for _ in range(self.runs):
                version = "v2" if version == "v1" else "v1"
                lab.publish({"web": app_manifest("web", [{**web, "image": self.refs[version]}])})
                started = time.perf_counter()
                assert lab.cli("sync").code == 0
                wait_for(
                    lambda v=version: http_get(port, timeout=0.2) == f"bench {v}", "new content"
                )
                timings.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=60)
            server.stop()
        return timings

    # --- 5. failure known -> previous state serving again ------------------------------------

    def rollback_recovery(self) -> list[float]:
        """From the moment the health step knows a change failed (its `health.failed` log
        record) to the first answer of the previous containers, for an image that exits."""
        lab = self.lab("rollback")
        port = lab.free_port()
        check = {"http": {"port": port, "path": "/index.html"}}
        web = {
            "name": "web",
            "image": self.refs["v1"],
            "ports": [f"127.0.0.1:{port}:80"],
            "health": check,
        }
        lab.publish({"web": app_manifest("web", [web])})
        assert lab.once().code == 0
        exits = self.images.exits("bench-exits", code=1)
        self.registry.push(exits, "bench/exits:1")
        spans = []
        for run in range(self.runs):
            broken = {**web, "image": f"{self.registry.address}/bench/exits:1", "restart": "no"}
            broken["env"] = {"RUN": str(run)}  # a new revision each run: never held back yet
            lab.publish({"web": app_manifest("web", [broken])})
            with serving_since(port) as first_answer_after:
                result = lab.once()
            assert result.code == 3, result.err
            failed_at = next(
                datetime.fromisoformat(r["ts"]).timestamp()
                for r in map(json.loads, filter(None, result.err.splitlines()))
                if r.get("event") == "health.failed"
            )
            spans.append(first_answer_after(failed_at))
        return spans

    # --- 6. a replaced app answering 404: new container started -> previous one serving -----

    def rollback_404(self) -> list[float]:
        """From the start of the new container (the engine's `start` event) to the first answer
        of the previous revision, for a new revision whose `/healthz` answers 404, with SPEC
        defaults (interval 2s, start_period 0s, failure_threshold 3, stable_for 10s) and
        `health.timeout: 120s`."""
        lab = self.lab("rollback404")
        lab.write_config(health={"timeout": "120s", "stable_for": "10s"})
        port = lab.free_port()
        web = {
            "name": "web",
            "image": self.refs["v1"],
            "ports": [f"127.0.0.1:{port}:80"],
            "health": {"http": {"port": port, "path": "/index.html"}},
        }
        lab.publish({"web": app_manifest("web", [web])})
        assert lab.once().code == 0
        label = f"{model.LABEL_NAMESPACE}={lab.namespace}"
        spans = []
        for run in range(self.runs):
            broken = {
                **web,
                "image": self.refs["v2"],
                "health": {"http": {"port": port, "path": "/healthz"}},  # busybox httpd: 404
                "env": {"RUN": str(run)},  # a new revision each run: never held back yet
            }
            lab.publish({"web": app_manifest("web", [broken])})
            since = time.time()
            with answers_on(port) as answers:
                result = lab.once()
            assert result.code == 3, result.err
            started = [
                event["timeNano"] / 1e9
                for event in self.client.api.events(
                    since=int(since),
                    until=int(time.time()) + 1,
                    decode=True,
                    filters={"type": "container", "event": "start", "label": label},
                )
                if event["timeNano"] / 1e9 >= since
            ]
            new_started = min(started)  # the new revision; the rollback's start comes after
            back = next(t for t, body in answers() if t >= new_started and body == "bench v1")
            spans.append(back - new_started)
        return spans

    # --- 4. no answer during an update --------------------------------------------------------

    def downtime(self) -> list[float]:
        lab = self.lab("downtime")
        port = lab.free_port()
        web = {"name": "web", "image": self.refs["v1"], "ports": [f"127.0.0.1:{port}:80"]}
        lab.publish({"web": app_manifest("web", [web])})
        assert lab.once().code == 0
        gaps = []
        version = "v1"
        for _ in range(self.runs):
            version = "v2" if version == "v1" else "v1"
            lab.publish({"web": app_manifest("web", [{**web, "image": self.refs[version]}])})
            wait_for(lambda: http_get(port, timeout=0.2) is not None, "serving before update")
            with probe(port) as longest_gap:
                run = lab.once()
                assert run.code == 0, run.err
                wait_for(lambda v=version: http_get(port, timeout=0.2) == f"bench {v}", "served")
            gaps.append(longest_gap())
        return gaps


@contextlib.contextmanager
def probe(port: int) -> Iterator[Callable[[], float]]:
    """Polls the port every 5 ms; yields a function returning the longest span with no answer.

    A probe gives up after 100 ms, so a connection the stopping container accepted but never
    answered costs at most that, not a long client timeout, in the measured gap."""
    stop = threading.Event()
    longest = [0.0]

    def poll() -> None:
        last_ok = time.perf_counter()
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.1) as reply:
                    reply.read()
                now = time.perf_counter()
                longest[0] = max(longest[0], now - last_ok)
                last_ok = now
            except OSError:
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield lambda: longest[0]
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def answers_on(port: int) -> Iterator[Callable[[], list[tuple[float, str]]]]:
    """Records (wall time the request was sent, body) of every answer on the port, polled every
    5 ms. The send time, so an answer of the old container still in flight when it stopped does
    not count as one given after the new container started."""
    stop = threading.Event()
    seen: list[tuple[float, str]] = []

    def poll() -> None:
        while not stop.is_set():
            sent = time.time()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.1) as reply:
                    body = reply.read().decode(errors="replace").strip()
                seen.append((sent, body))
            except OSError:
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield lambda: list(seen)
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def serving_since(port: int) -> Iterator[Callable[[float], float]]:
    """Records the wall time of every answer on the port (polled every 5 ms); yields a function
    giving, for a moment, the seconds from it to the first answer after it."""
    stop = threading.Event()
    answers: list[float] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.1) as reply:
                    reply.read()
                answers.append(time.time())
            except OSError:
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield lambda moment: next(t for t in answers if t >= moment) - moment
    finally:
        stop.set()
        thread.join(timeout=5)


def cycles_done(lab: DeviceLab) -> int:
    try:
        with urllib.request.urlopen(f"http://{lab.metrics_listen}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return 0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("reconciler_cycles_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--skip-100", action="store_true", help="skip the 100-app cycle")
    parser.add_argument(
        "--only",
        default="cycle,rss,latency,downtime,rollback,rollback404",
        help="comma-separated parts (default: all): cycle, rss, latency, downtime, rollback, "
        "rollback404",
    )
    parser.add_argument(
        "--engine",
        choices=(DOCKER, PODMAN),
        default=DOCKER,
        help="docker (the test dockerd) or podman (Podman's Docker-compatible API service)",
    )
    args = parser.parse_args(argv)
    logs.setup(level="error")  # the in-process cycles would warn about the unsigned lab release
    bench = Bench(args.runs, args.cycles, args.engine)
    print(f"# engine benchmark, {datetime.now(UTC):%Y-%m-%d}, {machine()}")
    print(
        f"# engine {args.engine} {bench.client.version()['Version']}; median of {args.runs}+ runs"
    )
    parts = set(args.only.split(","))
    try:
        for apps in ((1,) if args.skip_100 else (1, 100)) if "cycle" in parts else ():
            cpu, wall, child = bench.unchanged_cycle(apps)
            print(
                f"unchanged cycle, {apps} app(s) / {apps if apps == 1 else apps * 2} containers: "
                f"CPU {median_ms(cpu)} (+ git child {median_ms(child)}), wall {median_ms(wall)}",
                flush=True,
            )
        if "rss" in parts:
            first, after, cycles = bench.daemon_rss()
            print(
                f"daemon RSS: {first:.1f} MB after the first (verified) cycle, {after:.1f} MB "
                f"after {cycles}",
                flush=True,
            )
        if "latency" in parts:
            served = median_ms(bench.commit_to_served())
            print(f"commit -> new content served (with sync): {served}", flush=True)
        if "downtime" in parts:
            print(f"no answer during an image update: {median_ms(bench.downtime())} (longest gap)")
        if "rollback" in parts:
            recovery = median_ms(bench.rollback_recovery())
            print(f"failure known -> previous containers serving again: {recovery}")
        if "rollback404" in parts:
            spans = bench.rollback_404()
            print(
                "/healthz answers 404, health.timeout 120s: new container started -> previous "
                f"revision serving again: {median_ms(spans)} "
                f"(runs: {', '.join(f'{x:.2f} s' for x in spans)})",
                flush=True,
            )
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
