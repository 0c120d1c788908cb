"""`reconciler run` as systemd would run it: wake-ups, reloads, metrics, a clean stop."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.core import desired, planner, release
from reconciler.device import converge, cycle, executor, health_wait, state_store, wiring
from reconciler.device import daemon as daemon_loop
from reconciler.device.metrics import Metrics
from testkit.device_lab import (
    DeviceLab,
    app_manifest,
    http_get,
    managed,
    metric,
    scrape,
)
from testkit.git_server import GitDaemon
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry
from testkit.waiting import eventually

pytestmark = pytest.mark.docker

WAIT = 60.0  # generous: shared CI machines are slow, and each wait ends as soon as it holds


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2", "v3"):
        registry.push(images.httpd(f"daemon-web-{version}", f"page {version}"), f"d/web:{version}")
        refs[version] = f"{registry.address}/d/web:{version}"
    return refs


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config()
    return lab


@pytest.fixture
def daemon(lab: DeviceLab) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = lab.start_daemon()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.fixture
def git_daemon() -> Iterator[Callable[[Path], GitDaemon]]:
    """Starts `git daemon` over a directory; stopped at teardown, even after a failure."""
    servers: list[GitDaemon] = []

    def start(base: Path) -> GitDaemon:
        servers.append(GitDaemon(base).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def served(port: int, body: str) -> Callable[[], bool]:
    return lambda: http_get(port, timeout=0.5) == body


def stop(lab: DeviceLab, process: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, object]]]:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=WAIT)
    lines = lab.daemon_log.read_text().splitlines()
    return code, [json.loads(line) for line in lines if line]


def test_the_daemon_applies_cycles_on_sync_and_stops_cleanly_on_sigterm(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
    git_daemon: Callable[[Path], GitDaemon],
):
    # Served by `git daemon`, so only `sync` (not the watcher of a local repo) can wake it.
    server = git_daemon(lab.root)
    lab.source_url = server.url("fleet")
    lab.write_config()
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web])})
    process = daemon()
    eventually(served(port, "page v1"), "first apply on start")
    eventually((lab.state_dir / "daemon.pid").exists, "pid file")

    lab.publish({"web": app_manifest("web", [{**web, "image": pages["v2"]}])})
    sync = lab.cli("sync")
    assert sync.code == 0, sync.err
    eventually(served(port, "page v2"), "apply after sync")

    # Served before the cycle ends: the health step still waits out stable_for.
    eventually(
        lambda: metric(scrape(lab), 'reconciler_cycles_total{result="converged"}') >= 2,
        "the second converged cycle counted",
    )
    text = scrape(lab)
    assert metric(text, "reconciler_release_version") == 2
    assert metric(text, "reconciler_trust_disabled") == 1
    assert metric(text, 'reconciler_apps{state="running"}') == 1

    code, records = stop(lab, process)
    assert code == 0
    assert not (lab.state_dir / "daemon.pid").exists()
    events = [r["event"] for r in records]
    assert "daemon.start" in events and events[-1] == "daemon.stop"
    assert all({"ts", "level", "event"} <= set(r) for r in records)
    assert http_get(port) == "page v2"  # stopping the daemon leaves the apps running


def test_a_commit_to_a_local_fleet_repo_is_applied_without_waiting_for_the_poll(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
):
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web])})
    daemon()
    eventually(served(port, "page v1"), "first apply on start")

    lab.publish({"web": app_manifest("web", [{**web, "image": pages["v3"]}])})

    eventually(served(port, "page v3"), "apply after a commit to the watched local repo")


def test_a_label_file_change_reloads_and_sighup_reloads_the_config(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
    docker_client: docker.DockerClient,
):
    port = lab.free_port()
    selector = {"matchLabels": {"role": "gateway"}}
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web], selector=selector)})
    process = daemon()
    eventually(served(port, "page v1"), "first apply on start")

    (lab.labels_dir / "20-role.yaml").write_text("role: sensor\n")
    eventually(lambda: managed(docker_client, lab.namespace) == [], "app deselected by labels")

    (lab.labels_dir / "20-role.yaml").unlink()
    lab.labels = {"role": "sensor"}
    lab.write_config()  # the watcher sees this too; SIGHUP must also work on its own
    process.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert managed(docker_client, lab.namespace) == []
    lab.labels = {"role": "gateway"}
    lab.write_config()
    process.send_signal(signal.SIGHUP)
    eventually(served(port, "page v1"), "app selected again after the config changed")


def test_an_invalid_config_written_while_running_is_refused_and_the_old_one_kept(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
):
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web])})
    process = daemon()
    eventually(served(port, "page v1"), "first apply on start")

    good = lab.config_path.read_text()
    lab.config_path.write_text(good.replace("poll_interval: 1h", "poll_interval: soon"))
    process.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert process.poll() is None
    lab.publish({"web": app_manifest("web", [{**web, "image": pages["v2"]}])})
    eventually(served(port, "page v2"), "the daemon still applies with the previous config")

    code, records = stop(lab, process)
    assert code == 0
    invalid = [r for r in records if r["event"] == "config.invalid"]
    assert invalid and "source.poll_interval" in str(invalid[0]["problem"])


def test_a_second_daemon_on_the_same_state_dir_is_refused(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
):
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web])})
    first = daemon()
    eventually((lab.state_dir / "daemon.pid").exists, "pid file")

    second = lab.cli("run", timeout=60)
    once = lab.cli("once", timeout=60)

    assert second.code == 1 and f"process {first.pid}" in second.err
    assert once.code == 1 and "only one reconciler" in once.err


# --- never a dead daemon -----------------------------------------------------------------------

# Where a fault is injected, by the name the cycle's own code calls it under. An arbitrary bug
# cannot be provoked for real, so these are fakes: each raises once, the way any unexpected
# exception would (a RuntimeError no handler expects), then the real code runs again.
CYCLE_STEPS = {
    "fetch": ("git", "head"),
    "verify": (release, "check_succession"),
    "select": (desired, "decide"),
    "plan": (planner, "plan"),
    "apply": (executor, "apply"),
    "health": (health_wait, "wait_healthy"),
    "commit": (converge.Converger, "commit"),
    "state write": ("store", "save"),
}


def test_a_failure_at_any_step_of_a_cycle_fails_only_that_cycle_and_the_next_one_applies(
    lab: DeviceLab,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
):
    lab.write_config(health={"timeout": "30s", "stable_for": "0s"})
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [{**web, "env": {"STEP": "start"}}])})
    settings = wiring.load_settings(str(lab.config_path))
    counters = Metrics()
    with (
        state_store.StateStore(settings.state_dir).lock(),
        wiring.open_device(settings, metrics=counters) as dev,
    ):
        rec = dev.reconciler
        assert rec.cycle().result == "converged"
        for number, (step, (owner, name)) in enumerate(CYCLE_STEPS.items(), start=1):
            target = getattr(rec, owner) if isinstance(owner, str) else owner
            real = getattr(target, name)
            calls = []

            def boom(
                *args: object,
                _real: Any = real,
                _calls: list[int] = calls,
                _step: str = step,
                **kw: object,
            ) -> Any:
                if not _calls:
                    _calls.append(1)
                    raise RuntimeError(f"injected fault in {_step}")
                return _real(*args, **kw)

            monkeypatch.setattr(target, name, boom)
            lab.publish({"web": app_manifest("web", [{**web, "env": {"STEP": step}}])})

            failed = rec.cycle()

            assert failed.result == "failed", step
            assert f"injected fault in {step}" in failed.message
            assert counters.cycles.labels(result="failed")._value.get() == number
            if step != "state write":  # its one failure was the save of last_error itself
                assert f"injected fault in {step}" in (rec.store.load().last_error or "")
            assert rec.backoff_failures == 1  # the daemon backs off on it

            monkeypatch.setattr(target, name, real)
            applied = rec.cycle()

            assert applied.result == "converged", (step, applied.message)
            assert rec.backoff_failures == 0
            saved = rec.store.load()
            assert saved.last_error is None and saved.pending is None
            (container,) = managed(docker_client, lab.namespace)
            assert container.attrs["Config"]["Env"].count(f"STEP={step}") == 1, step
            assert http_get(port) == "page v1"


def test_the_daemon_lives_through_a_cycle_that_raises_and_backs_off_until_it_works(
    lab: DeviceLab,
    pages: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
):
    # The daemon's loop runs in this process (the faults are injected: see CYCLE_STEPS);
    # SIGTERM from a helper thread stops it the way systemd would.
    lab.write_config(source={"url": str(lab.fleet.root), "poll_interval": "100ms"})
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web])})
    settings = wiring.load_settings(str(lab.config_path))
    real_cycle = cycle.Reconciler._cycle
    calls: list[float] = []

    def flaky(self: cycle.Reconciler, now: datetime) -> cycle.CycleOutcome:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise RuntimeError("injected bug")
        if len(calls) == 5:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return real_cycle(self, now)

    monkeypatch.setattr(cycle.Reconciler, "_cycle", flaky)
    real_open = wiring.open_device
    opened: list[int] = []

    @contextlib.contextmanager
    def open_twice_failing(*args: Any, **kw: Any) -> Iterator[wiring.Device]:
        opened.append(1)
        if len(opened) == 1:
            raise OSError("injected: adapters could not be built")
        with real_open(*args, **kw) as dev:
            yield dev

    monkeypatch.setattr(wiring, "open_device", open_twice_failing)

    assert daemon_loop.run(str(lab.config_path), settings) == 0

    assert len(calls) >= 5
    # Back-off: the waits after the failures grow (0.1 s poll; then 0.2, 0.4 s).
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert http_get(port) == "page v1"
    saved = state_store.StateStore(settings.state_dir).load()
    assert saved.last_error is None and saved.apps[0].name == "web"


def test_a_labels_file_that_crashes_the_parser_keeps_the_previous_settings_and_says_so(
    lab: DeviceLab,
    pages: dict[str, str],
    daemon: Callable[[], subprocess.Popen[bytes]],
):
    port = lab.free_port()
    web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"web": app_manifest("web", [web], selector={"matchLabels": {"role": "gateway"}})})
    process = daemon()
    eventually(served(port, "page v1"), "first apply on start")

    # A NUL byte: input that made the YAML reader raise past the config checks.
    (lab.labels_dir / "10-bad.yaml").write_bytes(b"role: \x00sensor\n")
    process.send_signal(signal.SIGHUP)
    eventually(lambda: '"config.invalid"' in lab.daemon_log.read_text(), "config.invalid logged")
    status = lab.cli("status")
    lab.publish({"web": app_manifest("web", [{**web, "image": pages["v2"]}])})
    eventually(served(port, "page v2"), "the daemon still applies with the previous settings")

    assert process.poll() is None
    assert status.code == 0, status.err
    assert "config: invalid now, a running daemon keeps its previous settings" in status.out
    assert "labels.d" in status.out
    code, records = stop(lab, process)
    assert code == 0
    invalid = [r for r in records if r["event"] == "config.invalid"]
    assert invalid and all(r["action"] == "kept the previous config" for r in invalid)
