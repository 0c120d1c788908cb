"""`./demo.sh`, the README's first command, end to end against the real engine, as a person runs
it: every step shown, a rerun starting clean, and `--clean` removing what it left."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import docker
import pytest

from testkit.device_lab import http_get, managed

pytestmark = pytest.mark.docker

DEMO = Path(__file__).resolve().parents[2] / "demo.sh"
PROMISED_SECONDS = 120  # "under 2 minutes" (engine already running; ~20 s here)
STEPS = (
    "Result: the app is serving: ",
    "Result: the change was applied: ",
    "Result: the broken change was rolled back: ",
    "Result: the tampered manifest was refused: ",
)


def run_demo(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(DEMO), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, time.monotonic() - started


def assert_every_step_shown(out: str) -> int:
    """The port the app is left serving on, once every step's result and status were shown."""
    positions = [out.find(step) for step in STEPS]
    assert -1 not in positions, out
    assert positions == sorted(positions), "steps out of order"
    assert out.count("$ reconciler status --config device/config.yaml") == len(STEPS)
    assert "held back (not retried until the manifest changes):" in out
    assert "last refused release: apps/web/app.yaml: sha256" in out
    assert "the registry is stopped" in out
    match = re.search(r"curl http://127\.0\.0\.1:(\d+)/", out)
    assert match, out
    return int(match.group(1))


def test_the_demo_shows_each_step_reruns_clean_and_cleans_up(
    tmp_path: Path, docker_host: str, namespace: str, docker_client: docker.DockerClient
):
    state = tmp_path / "demo"
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,  # the session's engine: it outlives the demo's runs
        "RECONCILER_DEMO_DIR": str(state),
        "RECONCILER_DEMO_NAMESPACE": namespace,
    }
    try:
        first, seconds = run_demo(env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert seconds < PROMISED_SECONDS, f"the demo took {seconds:.0f} s"
        port = assert_every_step_shown(first.stdout)
        assert http_get(port, "/") == "Hello from web 1.1\n"  # left serving, as it says

        again, _ = run_demo(env)
        assert again.returncode == 0, again.stdout + again.stderr
        new_port = assert_every_step_shown(again.stdout)
        # The first run's app was removed, not left beside the second one.
        assert [c.status for c in managed(docker_client, namespace)] == ["running"]
        assert http_get(port, "/", timeout=1) is None or port == new_port
    finally:
        cleaned, _ = run_demo(env, "--clean")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert managed(docker_client, namespace) == []
    assert not state.exists()
    assert http_get(new_port, "/", timeout=1) is None


def test_the_demo_refuses_to_delete_a_directory_it_did_not_make(
    tmp_path: Path, docker_host: str, namespace: str
):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not the demo's")
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "RECONCILER_DEMO_DIR": str(precious),
        "RECONCILER_DEMO_NAMESPACE": namespace,
    }
    for args in ((), ("--clean",)):
        result, _ = run_demo(env, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "was not made by the demo" in result.stderr
    assert (precious / "keep.txt").read_text() == "not the demo's"
