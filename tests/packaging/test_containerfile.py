"""The Containerfile, built on the test engine and run against it, as the Containerfile says.

No image can be pulled here, so the base is the cached minimal rootfs imported with `docker
import` (kept on the engine under a tag naming the tarball, so later runs reuse it and the
build's dependency layer stays cached); the build context is a directory with the package only.
The build runs with host networking (apt reaches deb.debian.org the way the host does). The
container gets the engine socket, the fleet repo at its own path, the config at
/etc/reconciler/config.yaml, and a named volume as state_dir, with --network host.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from testkit.device_lab import DeviceLab, managed
from tests.packaging import chroots
from tests.packaging.conftest import publish_one_app

pytestmark = pytest.mark.docker

CONTAINERFILE = chroots.REPO / "Containerfile"
STATE_VOLUME_PATH = "/var/lib/reconciler"
ENGINE_SOCKET = "/var/run/docker.sock"  # where the Containerfile's usage mounts it
IMAGE_TAG = "reconciler-test/reconciler:packaging"


@pytest.fixture(scope="module")
def local_base(base_tarball: Path, docker_client: docker.DockerClient) -> str:
    """The base rootfs as an image: what `docker import` makes of base-rootfs.sh's tarball."""
    repository, version = "reconciler-test/debian", chroots.base_key(base_tarball)
    tag = f"{repository}:{version}"
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        docker_client.api.import_image_from_file(
            str(base_tarball), repository=repository, tag=version
        )
        # Bases of an older base-rootfs.sh: never used again.
        stale_prefix = version.rsplit("-", 1)[0] + "-"
        for image in docker_client.images.list(name=repository):
            stale = [
                t for t in image.tags if t != tag and t.startswith(f"{repository}:{stale_prefix}")
            ]
            for old in stale:
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove(old)
    return tag


@pytest.fixture(scope="module")
def reconciler_image(
    local_base: str,
    deb: Path,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The built image's id. It stays tagged IMAGE_TAG after the tests, so that the next build
    reuses its dependency layer; the build it replaces is removed."""
    context = tmp_path_factory.mktemp("container-context")
    shutil.copy(deb, context)
    previous = None
    with contextlib.suppress(docker.errors.ImageNotFound):
        previous = docker_client.images.get(IMAGE_TAG).id
    try:
        image, _log = docker_client.images.build(
            path=str(context),
            dockerfile=str(CONTAINERFILE),
            buildargs={"BASE": local_base},
            tag=IMAGE_TAG,
            network_mode="host",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
        pytest.fail(f"docker build -f Containerfile failed: {exc}\n{log[-3000:]}")
    if previous not in (None, image.id):
        with contextlib.suppress(docker.errors.APIError):  # in use by a parallel session
            docker_client.images.remove(previous)
    return str(image.id)


@pytest.fixture
def state_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    volume = docker_client.volumes.create(f"reconciler-test-state-{uuid.uuid4().hex[:8]}")
    yield volume.name
    volume.remove(force=True)


def run_in_container(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    *,
    volumes: dict[str, dict[str, str]],
) -> tuple[int, str]:
    """Run to the end like `docker run --rm --network host`; exit code and output."""
    container = client.containers.run(
        image, command, detach=True, network_mode="host", volumes=volumes
    )
    try:
        code = container.wait(timeout=180)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_image_runs_the_daemon_under_tini_with_state_on_a_volume(
    reconciler_image: str, docker_client: docker.DockerClient
):
    config = docker_client.images.get(reconciler_image).attrs["Config"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/bin/reconciler"]
    assert config["Cmd"] == ["run"]
    assert STATE_VOLUME_PATH in config["Volumes"]
    assert "DOCKER_CONFIG=/etc/reconciler/docker" in config["Env"]


def test_once_in_the_container_converges_the_host_engine_and_keeps_state_on_the_volume(
    reconciler_image: str,
    state_volume: str,
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    app_image: str,
    docker_client: docker.DockerClient,
):
    lab = DeviceLab(tmp_path / "lab", docker_host=docker_host, namespace=namespace)
    publish_one_app(lab, app_image)
    volumes = {
        str(lab.root): {"bind": str(lab.root), "mode": "ro"},
        str(lab.config_path): {"bind": "/etc/reconciler/config.yaml", "mode": "ro"},
        state_volume: {"bind": STATE_VOLUME_PATH, "mode": "rw"},
    }
    runtime: dict[str, str] = {"namespace": namespace}
    if docker_host.startswith("unix://"):
        # The engine's default socket, as the Containerfile's usage mounts it.
        volumes[docker_host.removeprefix("unix://")] = {"bind": ENGINE_SOCKET, "mode": "rw"}
    else:
        runtime["docker_host"] = docker_host  # reachable: --network host
    lab.write_config(runtime=runtime, state_dir=STATE_VOLUME_PATH)

    code, output = run_in_container(docker_client, reconciler_image, ["once"], volumes=volumes)
    assert code == 0, output
    assert "converged" in output
    (container,) = managed(docker_client, namespace)
    assert container.status == "running"

    # A new container on the same volume sees what the first one applied.
    code, output = run_in_container(
        docker_client, reconciler_image, ["status", "--json"], volumes=volumes
    )
    assert code == 0, output
    report = json.loads(output[output.index("{") :])
    assert [app["name"] for app in report["apps"]] == ["web"]
    assert report["state_dir"] == STATE_VOLUME_PATH
