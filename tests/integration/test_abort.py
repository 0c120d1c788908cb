"""An abort release returns a running app to its previous revision with no network (SPEC 2.3),
through `reconciler once` against the real engine (Docker and Podman).

The images carry the name of a registry that is nowhere (a free loopback port nobody listens
on): every pull fails at once, so each revision runs from the engine's own copy, and the return
to the previous revision needs nothing but the engine and state_dir. Once the abort release is
taken, the source points nowhere too, and the device stays where the abort put it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker
import pytest

from reconciler import model
from testkit.device_lab import DeviceLab, app_manifest, http_get, managed, web
from testkit.images import ImageFactory
from testkit.loopback import free_port

pytestmark = pytest.mark.docker


@pytest.fixture
def nowhere_images(images: ImageFactory, docker_client: docker.DockerClient) -> dict[str, str]:
    """v1 and v2 of a web image, tagged for a registry that does not exist."""
    registry = f"127.0.0.1:{free_port()}"
    refs = {}
    for version in ("v1", "v2"):
        local = images.httpd(f"abort-web-{version}", f"abort {version}")
        docker_client.images.get(local).tag(f"{registry}/abort/web", version)
        refs[version] = f"{registry}/abort/web:{version}"
    return refs


def test_an_abort_returns_the_app_to_its_previous_revision_offline_and_holds_it_back(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    nowhere_images: dict[str, str],
    docker_client: docker.DockerClient,
):
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    port = lab.free_port()
    v1 = app_manifest("web", [web(nowhere_images["v1"], port)])
    v2 = app_manifest("web", [web(nowhere_images["v2"], port)])
    lab.publish({"web": v1})
    assert lab.once().code == 0
    lab.publish({"web": v2}, message="v2")
    run = lab.once()
    assert run.code == 0, run.out + run.err
    assert http_get(port) == "abort v2"
    aborted = hashlib.sha256(v2.encode()).hexdigest()

    lab.fleet.write(".fleet/rollout.yaml", f"apps:\n  web: {{abort: {aborted[:12]}}}\n")
    lab.publish({}, message="abort web v2")
    run = lab.once()

    assert run.code == 0, run.out + run.err
    assert http_get(port) == "abort v1"
    (container,) = managed(docker_client, namespace)
    assert container.labels[model.LABEL_REVISION] == hashlib.sha256(v1.encode()).hexdigest()
    status = lab.status()
    assert [(h["app"], h["revision"]) for h in status["held_back"]] == [("web", aborted)]
    assert [(p["app"], p["kind"]) for p in status["pending_revisions"]] == [("web", "aborted")]

    # The source goes away: the device keeps the previous revision and never returns to v2.
    lab.source_url = str(tmp_path / "gone")
    lab.write_config()
    run = lab.once()

    assert run.code == 1
    assert "fetch failed" in run.out
    assert http_get(port) == "abort v1"
    (after,) = managed(docker_client, namespace)
    assert after.id == container.id
