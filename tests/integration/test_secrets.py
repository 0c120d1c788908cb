"""Secrets never leave the device's config: a canary in an env file and one in a Git URL's
credentials appear in no log line (at every level, debug included), no `status` (text or JSON),
no metric and no error message, across a successful apply, a malformed env file, a remote that
is down and the daemon's own loop. Real parts throughout: a smart-HTTP Git server, the engine,
the registry, the installed CLI."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from testkit.cli import CONSOLE_SCRIPT
from testkit.device_lab import DeviceLab, app_manifest, http_get, managed, scrape
from testkit.git_server import GitHttpServer
from testkit.images import ImageFactory
from testkit.loopback import free_port
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker

LEVELS = ("debug", "info", "warning", "error")


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_env_file_and_git_url_secrets_appear_in_no_log_status_metric_or_error(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    images: ImageFactory,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
    git_server: GitHttpServer,
):
    env_canary = f"envcanary{uuid.uuid4().hex}"
    url_canary = f"urlcanary{uuid.uuid4().hex}"
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    # The primary carries a token; a mirror that is down carries one too (its errors are
    # printed and counted per remote).
    lab.source_url = f"http://fleetbot:{url_canary}@127.0.0.1:{git_server.port}/fleet/.git"
    lab.mirrors = [f"https://mirror:{url_canary}@127.0.0.1:{free_port()}/fleet.git"]
    lab.write_config(health={"timeout": "30s", "stable_for": "0s"})
    registry.push(images.httpd("secret-web", "page"), "secrets/web:v1")
    image = f"{registry.address}/secrets/web:v1"
    env_file = tmp_path / "gw.env"
    env_file.write_text(f"TOKEN={env_canary}\n")
    port = lab.free_port()
    web = {"name": "web", "image": image, "ports": [f"127.0.0.1:{port}:80"]}
    lab.publish({"gw": app_manifest("gw", [{**web, "env_file": str(env_file)}])})
    said: list[str] = []

    def once(level: str) -> int:
        run = lab.cli("once", "--log-level", level)
        said.extend([run.out, run.err])
        return run.code

    def status() -> None:
        for args in (("status",), ("status", "--json")):
            run = lab.cli(*args)
            assert run.code == 0, run.err
            said.extend([run.out, run.err])

    assert once("debug") == 0
    assert http_get(port) == "page"
    (container,) = managed(docker_client, lab.namespace)
    assert f"TOKEN={env_canary}" in container.attrs["Config"]["Env"]  # the canary is live
    for level in LEVELS:
        assert once(level) == 0
    status()

    # An env file line without "=" that is itself the secret: the error names file and line.
    env_file.write_text(f"TOKEN={env_canary}\n{env_canary}\n")
    lab.publish({"gw": app_manifest("gw", [{**web, "env_file": str(env_file)}], selector={})})
    for level in LEVELS:
        assert once(level) == 1
    assert f"{env_file}: line 2" in said[-2]
    status()

    # Every remote down: the fetch errors name the remotes, redacted.
    env_file.write_text(f"TOKEN={env_canary}\n")
    git_server.stop()
    for level in LEVELS:
        assert once(level) == 1
    assert "fleetbot" not in said[-2] and "***@127.0.0.1" in said[-2]
    status()
    git_server.start()

    # The daemon at debug level, with its metrics endpoint, through a good and a failed cycle.
    log = tmp_path / "daemon-debug.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "run", "--log-level", "debug", "--config", str(lab.config_path)],
            env=lab.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "reconciler_cycles_total" not in scrape(lab):
            assert time.monotonic() < deadline and daemon.poll() is None, log.read_text()
            time.sleep(0.2)
        git_server.stop()
        assert lab.cli("sync").code == 0
        while 'reconciler_fetch_errors_total{remote="http' not in (text := scrape(lab)) or (
            'result="failed"} 0.0' in text
        ):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        said.append(scrape(lab))
        status()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        git_server.start()
    said.append(log.read_text())
    said.append((lab.state_dir / "state.json").read_text())

    everything = "\n".join(said)
    assert "cycle.done" in everything and "reconciler_fetch_errors_total" in everything
    assert env_canary not in everything
    assert url_canary not in everything
