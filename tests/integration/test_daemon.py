"""`reconciler run` as systemd would run it: wake-ups, reloads, metrics, a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.infra.git_server import GitDaemon
from tests.infra.images import ImageFactory
from tests.infra.registry import LocalRegistry
from tests.integration.device_lab import (
    DeviceLab,
    app_manifest,
    http_get,
    managed,
    metric,
    scrape,
)

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


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(0.2)


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
