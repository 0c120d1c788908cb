"""Faults a device meets in the field, against a real engine, registry and Git repo: a registry
that is down while a new image is needed, and an app that crashes as soon as it starts."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from reconciler import model
from testkit.device_lab import (
    DeviceLab,
    app_manifest,
    container_actions,
    http_get,
    log_events,
    managed,
    web,
)
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker

# The crash-loop daemon polls every second (settings accept any positive duration) and runs
# for 10 cycles, ~11 s. Its back-off (10 s, doubling) lets a dying container be recreated at
# cycles 1 and 2 and ~10 s later; the next retry comes ~30 s after the second, so a run that
# stops before CRASH_LOOP_DEADLINE has at most 3 creates, where no back-off would make 10.
FAST_POLL = "1s"
CRASH_LOOP_CYCLES = 10
CRASH_LOOP_DEADLINE = 25.0


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    return DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)


def count_cycles(lab: DeviceLab) -> int:
    """Cycles the lab's daemon finished so far (its log is still being written)."""
    try:
        return lab.daemon_log.read_text().count('"event": "cycle.done"')
    except FileNotFoundError:
        return 0


def test_with_the_registry_down_a_new_image_touches_nothing_and_applies_once_it_is_back(
    lab: DeviceLab,
    images: ImageFactory,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
):
    registry.push(images.httpd("lab-fault-web-v1", "hello v1"), "lab/fault-web:v1")
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(f"{registry.address}/lab/fault-web:v1", port)])})
    assert lab.once().code == 0
    (before,) = managed(docker_client, lab.namespace)
    old_revision = before.labels[model.LABEL_REVISION]

    # A body and tag no earlier run built, so no engine cache can hide the missing registry.
    unique = uuid.uuid4().hex
    local = images.httpd(f"lab-fault-new-{unique}", f"hello {unique}")
    registry.push(local, f"lab/fault-web:{unique}")
    remote = f"{registry.address}/lab/fault-web:{unique}"
    docker_client.images.remove(local)
    docker_client.images.remove(remote)  # the last tag: only a pull can bring it back
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(remote)
    lab.publish({"web": app_manifest("web", [web(remote, port)])}, message="new image")

    registry.stop()
    try:
        run = lab.once()

        assert run.code == 1, run.out + run.err
        assert unique in run.out
        (after,) = managed(docker_client, lab.namespace)
        assert after.id == before.id
        assert after.status == "running"
        assert http_get(port) == "hello v1"
        status = lab.status()
        assert status["apps"][0]["revision"] == old_revision
        assert status["pending"] is None
        assert "pull" in str(status["last_error"])
        assert remote in str(status["last_error"])
    finally:
        registry.start()

    again = lab.once()

    assert again.code == 0, again.err
    assert http_get(port) == f"hello {unique}"
    status = lab.status()
    assert status["apps"][0]["revision"] != old_revision
    assert status["last_error"] is None


def test_a_crash_looping_container_is_recreated_with_back_off_not_every_cycle(
    lab: DeviceLab,
    images: ImageFactory,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
    daemons: list[subprocess.Popen[bytes]],
):
    # Healthy long enough to be applied (stable_for is 1 s in the lab), then it dies: a crash
    # loop the health step cannot see, so drift correction must not recreate it every cycle.
    late_crash = images.build("lab-fault-late-crash", cmd=["sh", "-c", "sleep 2; exit 1"])
    registry.push(late_crash, "lab/fault-crash:v1")
    crasher = {
        "name": "main",
        "image": f"{registry.address}/lab/fault-crash:v1",
        "restart": "no",
    }
    lab.publish({"crash": app_manifest("crash", [crasher])})
    lab.write_config(source={"url": str(lab.fleet.root), "poll_interval": FAST_POLL})

    since = time.time()
    started = time.monotonic()
    daemon = lab.start_daemon()
    daemons.append(daemon)
    while count_cycles(lab) < CRASH_LOOP_CYCLES and daemon.poll() is None:
        assert time.monotonic() - started < CRASH_LOOP_DEADLINE, lab.daemon_log.read_text()
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=60)

    records = log_events(lab.daemon_log.read_text())
    cycles = [r for r in records if r["event"] == "cycle.done"]
    backed_off = [r for r in records if r["event"] == "drift.backoff"]
    creates = container_actions(docker_client, lab.namespace, since).count("create")
    assert code == 0, lab.daemon_log.read_text()
    assert len(cycles) >= CRASH_LOOP_CYCLES, f"{len(cycles)} cycles in {elapsed:.1f}s"
    # First create, one immediate retry, then 10 s back-off (doubling): at most one more.
    assert 2 <= creates <= 3, f"{creates} creates in {len(cycles)} cycles"
    assert backed_off and all(r["app"] == "crash" for r in backed_off)
    # A backed-off cycle changes nothing: no pull, no transaction, counted as unchanged.
    unchanged = [r for r in cycles if r["result"] == "unchanged"]
    assert len(unchanged) >= len(cycles) - creates - 1
    assert len(managed(docker_client, lab.namespace)) == 1  # each retry replaced the last


def test_an_app_that_cannot_start_reverts_the_cycle_and_only_it_is_held_back(
    lab: DeviceLab,
    images: ImageFactory,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
):
    registry.push(images.httpd("lab-fault-web-v1", "hello v1"), "lab/fault-web:v1")
    image = f"{registry.address}/lab/fault-web:v1"
    good_port = lab.free_port()
    with socket.socket() as squatter:  # something else on the device holds the port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        lab.publish(
            {
                "alpha": app_manifest("alpha", [web(image, good_port)]),
                "bravo": app_manifest("bravo", [web(image, taken)]),
            }
        )

        first = lab.once()

        assert first.code == 3, first.err  # rolled back
        assert "bravo/web" in first.out
        assert managed(docker_client, lab.namespace) == []  # alpha's new container went too
        status = lab.status()
        assert [h["app"] for h in status["held_back"]] == ["bravo"]
        assert status["apps"] == []

        second = lab.once()  # bravo is not retried; alpha goes ahead alone

        assert second.code == 0, second.err
        assert http_get(good_port) == "hello v1"
        assert [c.labels[model.LABEL_APP] for c in managed(docker_client, lab.namespace)] == [
            "alpha"
        ]
        assert [a["name"] for a in lab.status()["apps"]] == ["alpha"]


@pytest.mark.not_on_podman(
    "Podman cannot delete an image a container runs from: `rmi --force` removes the container "
    "too, so a running app's previous image cannot be gone as this test makes it"
)
def test_an_update_whose_rollback_images_are_gone_is_not_started_until_they_are_back(
    lab: DeviceLab,
    images: ImageFactory,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
):
    unique = uuid.uuid4().hex[:12]
    old_local = images.httpd(f"lab-fault-kept-{unique}", "hello kept")
    registry.push(old_local, f"lab/fault-kept:{unique}")
    kept = f"{registry.address}/lab/fault-kept:{unique}"
    new_local = images.httpd(f"lab-fault-next-{unique}", "hello next")
    registry.push(new_local, f"lab/fault-next:{unique}")
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(kept, port)])})
    assert lab.once().code == 0
    (before,) = managed(docker_client, lab.namespace)
    old_revision = before.labels[model.LABEL_REVISION]
    # Deleted by hand (the running container keeps its layers, but the engine no longer has
    # the image a rollback would start), while the new revision's image is local: the update
    # itself could be applied offline, its rollback could not.
    docker_client.images.remove(kept, force=True)
    docker_client.images.remove(old_local, force=True)
    lab.publish(
        {"web": app_manifest("web", [web(f"{registry.address}/lab/fault-next:{unique}", port)])}
    )

    registry.stop()
    try:
        run = lab.once()

        assert run.code == 1, run.out + run.err
        assert "not started" in run.out and kept in run.out
        (after,) = managed(docker_client, lab.namespace)
        assert after.id == before.id and after.status == "running"
        assert http_get(port) == "hello kept"
        status = lab.status()
        assert status["apps"][0]["revision"] == old_revision
        assert status["pending"] is None and status["held_back"] == []
        assert "a rollback to revision" in str(status["last_error"])
        assert kept in str(status["last_error"])
    finally:
        registry.start()

    again = lab.once()  # the registry is back: the kept image is pulled again, then the update

    assert again.code == 0, again.out + again.err
    assert http_get(port) == "hello next"
    assert docker_client.images.get(kept) is not None
    assert lab.status()["last_error"] is None
