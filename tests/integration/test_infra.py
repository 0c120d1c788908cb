"""The test infrastructure itself, against its real parts: engine, busybox images, registry."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import docker.errors
import pytest

from demo import lab
from reconciler import model
from testkit import engine
from testkit.engine import PODMAN, PODMAN_HOST_ENV, EngineLayout, acquire, answers
from testkit.loopback import free_port

pytestmark = pytest.mark.docker

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, *, within: float = 10.0) -> str:
    """The body at `url`, retrying while the container comes up."""
    deadline = time.monotonic() + within
    while True:
        try:
            with _NO_PROXY.open(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(client: docker.DockerClient, image: str, namespace: str, **kwargs: object):
    return client.containers.run(
        image, detach=True, labels={model.LABEL_NAMESPACE: namespace}, **kwargs
    )


def test_the_engine_answers_and_speaks_api_1_41_or_newer(docker_client, docker_host):
    assert docker_client.ping()
    assert answers(docker_host) or os.environ.get("DOCKER_HOST") == docker_host
    major, minor = map(int, docker_client.version()["ApiVersion"].split("."))
    assert (major, minor) >= (1, 41)


def test_a_second_lease_reuses_the_running_engine_and_leaves_it_running(docker_host, engine_kind):
    lease = acquire(kind=engine_kind)
    try:
        assert lease.url == docker_host
        assert not lease.started_here
    finally:
        assert lease.release() is False  # this session still uses it
    assert answers(docker_host)


def test_a_given_engine_that_does_not_answer_falls_back_to_the_test_socket(
    docker_host, tmp_path, engine_kind
):
    variable = PODMAN_HOST_ENV if engine_kind == PODMAN else "DOCKER_HOST"
    if variable in os.environ:
        pytest.skip(f"the session uses {variable} itself")
    env = {**os.environ, variable: f"unix://{tmp_path}/nobody.sock"}
    lease = acquire(env=env, start_timeout=5, kind=engine_kind)
    try:
        assert lease.url == EngineLayout.from_env(env, engine_kind).url == docker_host
        assert not lease.started_here
    finally:
        lease.release()


def test_an_httpd_image_serves_its_body_on_a_published_loopback_port(
    images, docker_client, namespace
):
    port = free_port()
    run(
        docker_client,
        images.httpd("infra-httpd", "hello from busybox"),
        namespace,
        ports={"80/tcp": ("127.0.0.1", port)},
    )
    assert fetch(f"http://127.0.0.1:{port}/index.html") == "hello from busybox"


def test_the_same_image_spec_is_built_once_and_another_spec_gets_another_reference(images):
    first = images.httpd("infra-cache", "one")
    assert images.httpd("infra-cache", "one") == first
    assert images.httpd("infra-cache", "two") != first
    assert first.startswith("reconciler-test/infra-cache:")


@pytest.mark.not_on_podman(
    "Podman runs an image's HEALTHCHECK from systemd timers, and there is no systemd here; "
    "the reconciler runs it itself on Podman (tests/integration/test_health_checks.py)"
)
def test_extra_files_and_a_healthcheck_are_built_into_the_image(images, docker_client, namespace):
    image = images.build(
        "infra-health",
        cmd=["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /srv & wait"],
        files={"/srv/index.html": "ok", "/etc/app/conf.txt": "x=1\n"},
        healthcheck=["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/index.html"],
    )
    container = run(docker_client, image, namespace)
    assert container.exec_run(["cat", "/etc/app/conf.txt"]).output == b"x=1\n"
    deadline = time.monotonic() + 15
    while (status := container.attrs["State"].get("Health", {}).get("Status")) != "healthy":
        assert time.monotonic() < deadline, f"health stayed {status!r}"
        time.sleep(0.2)
        container.reload()


def test_the_exiting_image_exits_with_its_code_and_the_sleeper_stops_at_once(
    images, docker_client, namespace
):
    exiting = run(docker_client, images.exits("infra-exit", 3), namespace)
    assert exiting.wait(timeout=30)["StatusCode"] == 3
    sleeper = run(docker_client, images.sleeper("infra-sleep"), namespace)
    started = time.monotonic()
    sleeper.stop(timeout=60)
    assert time.monotonic() - started < 20  # SIGTERM ends it; no wait for the 60 s kill


def test_an_image_pushed_to_the_registry_pulls_by_tag_and_by_digest(
    images, registry, docker_client, namespace
):
    local = images.httpd(f"infra-push-{namespace}", namespace)  # unique content per test run
    digest_ref = registry.push(local, f"infra/{namespace}:v1")
    tag_ref = f"{registry.address}/infra/{namespace}:v1"
    assert digest_ref.startswith(f"{registry.address}/infra/{namespace}@sha256:")
    image_id = docker_client.images.get(local).id
    docker_client.images.remove(image_id, force=True)  # so the pulls really fetch

    assert docker_client.images.pull(tag_ref).id == image_id
    docker_client.images.remove(image_id, force=True)
    assert docker_client.images.pull(digest_ref).id == image_id
    docker_client.images.remove(image_id, force=True)


def test_a_pull_from_a_stopped_registry_fails_and_works_again_after_start(
    images, registry, docker_client, namespace
):
    local = images.httpd(f"infra-down-{namespace}", namespace)  # unique: removed below
    ref = registry.push(local, "infra/down:v1")
    # Gone from the engine, so the pull must reach the registry (Podman: an image present
    # locally makes its pull succeed whatever the registry says).
    docker_client.images.remove(docker_client.images.get(local).id, force=True)
    registry.stop()
    try:
        with pytest.raises(docker.errors.APIError, match=registry.address):
            docker_client.images.pull(ref)
    finally:
        registry.start()
    assert docker_client.images.pull(ref).id == docker_client.images.get(ref).id


# --- who stops an engine: the tests stop only one the tests started ---------------------------

# Run once, not once per engine: the Podman service goes through the same code, named "podman".
_DOCKERD_PATH = pytest.mark.not_on_podman(
    "exercises the test setup's start and stop path with a stand-in dockerd, once is enough"
)

# A stand-in for dockerd, put first on PATH: the tests must never start a second real engine
# beside the shared one (two fight over the bridge and iptables), nor stop the shared one. It
# takes dockerd's -H and --pidfile, links that socket to the shared engine's (so the engine that
# answers there is real), records its pid and sleeps under the name "dockerd", which is all the
# start and stop paths look at.
STAND_IN = """#!/bin/bash
while [ $# -gt 0 ]; do
  case "$1" in
    -H) socket="${2#unix://}"; shift 2 ;;
    --pidfile) pidfile="$2"; shift 2 ;;
    *) shift ;;
  esac
done
ln -s "$REAL_ENGINE_SOCKET" "$socket"
echo $$ > "$pidfile"
exec -a dockerd sleep 600
"""


@pytest.fixture
def stand_in_layout(docker_host, monkeypatch):
    """An engine layout in a fresh run dir (its own lock, users and marker files) where starting
    "dockerd" runs the stand-in above, named by the environment; yields that layout. The
    stand-ins are stopped at the end whatever the test did."""
    if not docker_host.startswith("unix://"):
        pytest.skip("the stand-in links to the engine's unix socket; DOCKER_HOST is not one")
    # Short: a unix socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="eng-", dir="/tmp"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "dockerd").write_text(STAND_IN)
    (bin_dir / "dockerd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("REAL_ENGINE_SOCKET", docker_host.removeprefix("unix://"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv(engine.RUN_DIR_ENV, str(root / "run"))
    monkeypatch.setenv(engine.DATA_ROOT_ENV, str(root / "data"))
    # Where the demo looks before the project's socket: nothing answers there in this test.
    monkeypatch.setattr(lab, "DEFAULT_ENGINE", f"unix://{root}/no-engine.sock")
    layout = EngineLayout.from_env(os.environ)
    handed_over = len(engine._HANDED_OVER)  # earlier ones may be real engines: never touched
    try:
        yield layout
    finally:
        for popen in engine._HANDED_OVER[handed_over:]:
            if popen.poll() is None and is_stand_in(popen.pid):
                with contextlib.suppress(ProcessLookupError):
                    popen.terminate()
                popen.wait(timeout=10)
        with contextlib.suppress(OSError, ValueError):  # one the demo's process started
            pid = int(layout.pidfile.read_text())
            if is_stand_in(pid):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


def is_stand_in(pid: int) -> bool:
    """The stand-in calls itself dockerd but runs `sleep`; a real dockerd runs dockerd."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        program = Path(f"/proc/{pid}/exe").resolve().name
    except OSError:
        return False
    return argv0 == b"dockerd" and program == "sleep"


def stand_in_pid(layout: EngineLayout) -> int:
    pid = int(layout.pidfile.read_text())
    assert is_stand_in(pid), "not the stand-in: the test must never signal a real engine"
    return pid


def running(pid: int) -> bool:
    return engine._alive(pid)


def demo_acquires_engine() -> bool:
    """What ./demo.sh does about the engine, in a process that then exits (as the demo does,
    never releasing its lease); True when it started the engine."""
    code = (
        "import sys\n"
        "from demo import lab\n"
        "lab.DEFAULT_ENGINE = sys.argv[1]\n"
        "print(lab.acquire_engine().started_here)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, lab.DEFAULT_ENGINE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    return result.stdout.strip() == "True"


@_DOCKERD_PATH
def test_an_engine_the_demo_started_outlives_the_test_session_that_reused_it(stand_in_layout):
    assert demo_acquires_engine()  # nothing answered: the demo started "dockerd" (the stand-in)
    pid = stand_in_pid(stand_in_layout)
    assert running(pid)

    session = acquire(env=os.environ)  # ./scripts/test.sh after ./demo.sh
    assert session.url == stand_in_layout.url and not session.started_here
    assert session.release() is False
    assert running(pid), "a test session stopped the engine the demo started"
    assert answers(stand_in_layout.url)


@_DOCKERD_PATH
def test_an_engine_the_tests_started_is_kept_once_the_demo_reused_it(stand_in_layout):
    session = acquire(env=os.environ)
    assert session.started_here
    pid = stand_in_pid(stand_in_layout)
    assert not demo_acquires_engine()  # ./demo.sh while the tests run: it reuses their engine

    assert session.release() is False
    assert running(pid), "the test session stopped an engine the demo's app runs on"


@_DOCKERD_PATH
def test_the_last_test_session_stops_an_engine_the_tests_started(stand_in_layout):
    first = acquire(env=os.environ)
    assert first.started_here
    pid = stand_in_pid(stand_in_layout)
    second = acquire(env=os.environ)  # a parallel session reuses it
    assert first.release() is False  # the second one still uses it
    assert running(pid)
    assert second.release() is True
    assert not running(pid)
    assert not stand_in_layout.marker.exists()
