"""Network faults against real parts: the registry and the Git server fail, stall or go away
while `reconciler once` runs; the cycle fails in bounded time and says so in `status`, the
running app keeps serving, nothing is lost, and the next cycle recovers once the fault is gone.

The faults come from `testkit/stall_proxy.FaultProxy` in front of the real docker-registry
and the real `git daemon`: a real stall (bytes stop mid-blob on a live connection), a real
refused connection, a real 500 answer and real garbage on the wire. Deadlines are the config's
(`runtime.pull_stall_timeout`, `source.timeout`), set to 2 s here so each test takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from testkit.cli import CONSOLE_SCRIPT
from testkit.device_lab import DeviceLab, Run, app_manifest, http_get, log_events
from testkit.git_server import GitDaemon
from testkit.images import ImageFactory
from testkit.private_engine import PrivateEngine, PrivateEngineUnavailable
from testkit.registry import LocalRegistry
from testkit.stall_proxy import Fault, FaultProxy

pytestmark = pytest.mark.docker

DEADLINE = "2s"  # runtime.pull_stall_timeout and source.timeout in these tests
FAILED_WITHIN = 30.0  # generous bound on a failing cycle: far below any default deadline
# A shell as PID 1 that exits on SIGTERM, serving /www.
SERVE = "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"


@pytest.fixture(scope="module")
def v1(images: ImageFactory, registry: LocalRegistry) -> str:
    """An httpd serving "nf v1", pulled from the registry straight (no proxy)."""
    registry.push(images.httpd("nf-web-v1", "nf v1"), "nf/web:v1")
    return f"{registry.address}/nf/web:v1"


@pytest.fixture
def registry_proxy(registry: LocalRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", registry.port), stall_after=32 * 1024) as proxy:
        yield proxy


@pytest.fixture
def remote_only(
    images: ImageFactory, registry: LocalRegistry, docker_client: docker.DockerClient
) -> Iterator[str]:
    """`nf/web-<token>:v2` (serves "nf v2"), in the registry but not in the engine, with a
    layer of about 400 KB of its own: a pull must download it."""
    token = secrets.token_hex(4)
    padding = secrets.token_hex(200 * 1024)  # incompressible enough to span many chunks
    local = images.build(
        f"nf-remote-{token}",
        cmd=["sh", "-c", SERVE],
        files={"/www/index.html": "nf v2", "/www/padding.txt": padding},
    )
    repo_tag = f"nf/web-{token}:v2"
    registry.push(local, repo_tag)
    for ref in (local, f"{registry.address}/{repo_tag}"):
        docker_client.images.remove(ref, force=True)
    yield repo_tag
    for ref in _tags_of(docker_client, f"/nf/web-{token}:"):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(ref, force=True)


def _tags_of(client: docker.DockerClient, part: str) -> list[str]:
    """The image tags containing `part`; best effort: listing every image races other workers'
    removals (Podman answers 500 for an image removed while it lists), so it is asked again,
    and a leftover image only costs disk in the test engine."""
    for _attempt in range(3):
        try:
            listed = client.api.images()  # low-level: the high-level one inspects each image
        except docker.errors.APIError:
            time.sleep(0.5)
            continue
        return [ref for image in listed for ref in image.get("RepoTags") or () if part in ref]
    return []


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    configure(lab)
    return lab


def configure(lab: DeviceLab, *, pull_stall_timeout: str = DEADLINE) -> None:
    lab.write_config(
        source={
            "url": lab.source_url or str(lab.fleet.root),
            "poll_interval": "1h",
            "timeout": DEADLINE,
        },
        runtime={
            "docker_host": lab.docker_host,
            "namespace": lab.namespace,
            "pull_stall_timeout": pull_stall_timeout,
        },
        health={"timeout": "30s", "stable_for": "1s"},
    )


def web(image: str, port: int) -> str:
    check = {"http": {"port": port, "path": "/index.html"}}
    spec = {"name": "web", "image": image, "ports": [f"127.0.0.1:{port}:80"], "health": check}
    return app_manifest("web", [spec])


class Serving:
    """The lab with `web` at v1 applied and answering on `port`."""

    def __init__(self, lab: DeviceLab, v1: str) -> None:
        self.lab = lab
        self.port = lab.free_port()
        lab.publish({"web": web(v1, self.port)})
        run = lab.once()
        assert run.code == 0, run.err
        assert http_get(self.port) == "nf v1"
        self.revision = self.applied_revision()

    def applied_revision(self) -> str:
        (app,) = self.lab.status()["apps"]
        return str(app["revision"])

    def fails_keeping_v1(self) -> str:
        """Run a cycle that must fail in bounded time leaving v1 serving; its last error."""
        started = time.monotonic()
        run = self.lab.once()
        assert time.monotonic() - started < FAILED_WITHIN
        return self.failed_keeping_v1(run)

    def failed_keeping_v1(self, run: Run) -> str:
        """Check a cycle that failed left v1 serving and its last good state; its last error."""
        assert run.code == 1, run.out + run.err
        assert http_get(self.port, timeout=30) == "nf v1"
        status = self.lab.status()
        assert self.applied_revision() == self.revision  # the last good state is kept
        assert status["last_error"], status
        return str(status["last_error"])

    def recovers_to(self, body: str) -> None:
        run = self.lab.once()
        assert run.code == 0, run.out + run.err
        assert http_get(self.port) == body
        assert self.lab.status()["last_error"] is None
        assert self.applied_revision() != self.revision


# --- the registry --------------------------------------------------------------------------------


def test_a_registry_that_stalls_mid_blob_fails_the_cycle_at_the_watchdog_then_recovers(
    lab: DeviceLab, v1: str, registry_proxy: FaultProxy, remote_only: str
):
    serving = Serving(lab, v1)
    image = f"{registry_proxy.address}/{remote_only}"
    lab.publish({"web": web(image, serving.port)})
    registry_proxy.fault = Fault.STALL_BLOB

    error = serving.fails_keeping_v1()

    assert registry_proxy.stalled.is_set()  # the bytes really stopped mid-blob
    assert f"pull {image}" in error
    assert f"no progress from registry {registry_proxy.address} for 2 s" in error
    registry_proxy.fault = Fault.NONE
    serving.recovers_to("nf v2")


def test_a_registry_answering_500_fails_the_cycle_then_recovers(
    lab: DeviceLab, v1: str, registry_proxy: FaultProxy, remote_only: str
):
    # The engine retries a 500 for about 5 s without a progress event: a watchdog shorter than
    # that would cut it off before the engine names the 500.
    configure(lab, pull_stall_timeout="15s")
    serving = Serving(lab, v1)
    image = f"{registry_proxy.address}/{remote_only}"
    lab.publish({"web": web(image, serving.port)})
    registry_proxy.fault = Fault.HTTP_500

    error = serving.fails_keeping_v1()

    assert f"pull {image}" in error
    assert "500" in error
    registry_proxy.fault = Fault.NONE
    serving.recovers_to("nf v2")


def test_a_registry_that_is_gone_fails_the_cycle_then_recovers(
    lab: DeviceLab, v1: str, registry_proxy: FaultProxy, remote_only: str, engine_kind: str
):
    serving = Serving(lab, v1)
    image = f"{registry_proxy.address}/{remote_only}"
    lab.publish({"web": web(image, serving.port)})
    registry_proxy.fault = Fault.GONE

    error = serving.fails_keeping_v1()

    assert f"pull {image}" in error
    # Docker reports the refusal; Podman retries it quietly until the progress watchdog ends
    # the pull.
    said = "connection refused" if engine_kind == "docker" else "no progress from registry"
    assert said in error.lower()
    registry_proxy.fault = Fault.NONE
    serving.recovers_to("nf v2")


# --- the Git server ------------------------------------------------------------------------------


@pytest.fixture
def git_proxy(lab: DeviceLab) -> Iterator[FaultProxy]:
    """`git daemon` serving the lab's fleet repo, behind a proxy the lab's source points at."""
    with GitDaemon(lab.root) as server, FaultProxy(("127.0.0.1", server.port)) as proxy:
        lab.source_url = f"git://{proxy.address}/fleet"
        configure(lab)
        yield proxy


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (Fault.SILENT, "timed out after 2s"),
        (Fault.GARBAGE, "protocol error"),
        (Fault.GONE, "connection refused"),
    ],
    ids=["stalling", "sending-garbage", "gone"],
)
def test_a_git_server_that_fails_fails_the_cycle_then_recovers(
    lab: DeviceLab,
    v1: str,
    registry: LocalRegistry,
    images: ImageFactory,
    git_proxy: FaultProxy,
    fault: Fault,
    said: str,
):
    serving = Serving(lab, v1)
    registry.push(images.httpd("nf-web-v3", "nf v3"), "nf/web:v3")
    lab.publish({"web": web(f"{registry.address}/nf/web:v3", serving.port)})
    git_proxy.fault = fault

    error = serving.fails_keeping_v1()

    assert f"git://{git_proxy.address}/fleet" in error  # names the remote
    assert said in error.lower()
    git_proxy.fault = Fault.NONE
    serving.recovers_to("nf v3")


# --- the engine restarted ------------------------------------------------------------------------
# On a private dockerd (testkit/private_engine.py): the shared test engine serves other tests
# and is never restarted. Its containers stop with it and come back by their restart policy.


# Their app runs on the private dockerd whichever engine the session's registry pushes with:
# one run is enough. A restart of Podman's API service is not covered.
_PRIVATE_DOCKERD = pytest.mark.not_on_podman(
    "restarts a private dockerd (the app runs there, not on Podman)"
)
# Two private engines at once would both claim the private bridge's address: one worker runs them.
_ONE_WORKER = pytest.mark.xdist_group("private-dockerd")


@pytest.fixture(scope="module")
def private_engine() -> Iterator[PrivateEngine]:
    try:
        engine = PrivateEngine()
    except PrivateEngineUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI is set: these tests must run there, not skip)")
        pytest.skip(str(exc))
    with engine:
        yield engine


@pytest.fixture
def private_lab(
    tmp_path: Path, private_engine: PrivateEngine, namespace: str
) -> Iterator[DeviceLab]:
    lab = DeviceLab(tmp_path, docker_host=private_engine.url, namespace=namespace)
    configure(lab)
    yield lab
    label = {"label": f"reconciler.namespace={namespace}"}
    with contextlib.closing(private_engine.client()) as client:
        for container in client.containers.list(all=True, filters=label):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters=label):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()


def once_restarting(
    lab: DeviceLab, engine: PrivateEngine, when: Callable[[list[str]], bool]
) -> Run:
    """`reconciler once`, with the engine restarted as soon as `when(log lines so far)` is true;
    fails the test if that moment never came."""
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "once", "--config", str(lab.config_path)],
        env=lab.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    err: list[str] = []
    reader = threading.Thread(
        target=lambda: err.extend(line.decode(errors="replace") for line in process.stderr or ())
    )
    reader.start()
    deadline = time.monotonic() + 60
    while not when(err):
        assert process.poll() is None, "the cycle ended before the moment to restart came"
        assert time.monotonic() < deadline, "the moment to restart never came"
        time.sleep(0.01)
    engine.restart()
    out, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    return Run(process.returncode, out.decode(errors="replace"), "".join(err))


def logged(event: str) -> Callable[[list[str]], bool]:
    """True once the cycle logged `event`."""
    return lambda lines: any(r.get("event") == event for r in log_events("".join(lines[:])))


@_PRIVATE_DOCKERD
@_ONE_WORKER
def test_dockerd_restarted_during_a_pull_fails_the_cycle_and_the_next_one_recovers(
    private_lab: DeviceLab,
    private_engine: PrivateEngine,
    v1: str,
    registry_proxy: FaultProxy,
    remote_only: str,
):
    configure(private_lab, pull_stall_timeout="60s")  # the restart ends the pull, not the watchdog
    serving = Serving(private_lab, v1)
    image = f"{registry_proxy.address}/{remote_only}"
    private_lab.publish({"web": web(image, serving.port)})
    registry_proxy.fault = Fault.STALL_BLOB  # holds the pull open until the engine goes

    run = once_restarting(private_lab, private_engine, lambda _: registry_proxy.stalled.is_set())

    error = serving.failed_keeping_v1(run)
    assert image in error and private_engine.url in error  # names the image and the engine
    registry_proxy.fault = Fault.NONE
    serving.recovers_to("nf v2")


@_PRIVATE_DOCKERD
@_ONE_WORKER
def test_dockerd_restarted_as_the_replace_begins_fails_the_cycle_and_the_next_one_recovers(
    private_lab: DeviceLab,
    private_engine: PrivateEngine,
    v1: str,
    registry: LocalRegistry,
    images: ImageFactory,
):
    serving = Serving(private_lab, v1)
    registry.push(images.httpd("nf-web-v3", "nf v3"), "nf/web:v3")
    private_lab.publish({"web": web(f"{registry.address}/nf/web:v3", serving.port)})

    run = once_restarting(private_lab, private_engine, logged("apply.replace"))

    # Whichever engine call of the replace (inspect, create, stop, start) the restart cut, the
    # cycle fails or rolls back, says so naming the engine, and v1 serves again.
    assert run.code in (1, 3), run.out + run.err
    assert http_get(serving.port, timeout=30) == "nf v1"
    assert serving.applied_revision() == serving.revision
    assert private_engine.url in str(private_lab.status()["last_error"])
    serving.recovers_to("nf v3")


@_PRIVATE_DOCKERD
@_ONE_WORKER
def test_dockerd_restarted_during_the_health_wait_is_waited_out_and_the_change_applies(
    namespace: str,
    private_lab: DeviceLab,
    private_engine: PrivateEngine,
    v1: str,
    registry: LocalRegistry,
    images: ImageFactory,
):
    serving = Serving(private_lab, v1)
    registry.push(images.httpd("nf-web-v3", "nf v3"), "nf/web:v3")
    private_lab.publish({"web": web(f"{registry.address}/nf/web:v3", serving.port)})

    run = once_restarting(private_lab, private_engine, logged("health.wait"))

    # The engine gone is no failed probe: the wait goes on, the container comes back by its
    # restart policy, passes, and the change is committed.
    assert run.code == 0, run.out + run.err
    wait_began = next(r["ts"] for r in log_events(run.err) if r["event"] == "health.wait")
    with contextlib.closing(private_engine.client()) as client:
        (container,) = client.containers.list(filters={"label": "reconciler.app=web"})
        started = container.attrs["State"]["StartedAt"]
    assert started[:23] > str(wait_began)[:23]  # it was started again during the wait
    assert http_get(serving.port) == "nf v3"
    assert private_lab.status()["last_error"] is None
