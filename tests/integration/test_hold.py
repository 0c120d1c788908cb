"""`reconciler hold` / `unhold` beside a running `reconciler run` on the real engine (Docker and
Podman): the daemon reads the hold each cycle, the verbs wake it, and the metrics show it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from testkit.device_lab import DeviceLab, app_manifest, http_get, managed, metric, scrape, web
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry
from testkit.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2"):
        registry.push(images.httpd(f"hold-web-{version}", f"hold {version}"), f"h/web:{version}")
        refs[version] = f"{registry.address}/h/web:{version}"
    return refs


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> Iterator[DeviceLab]:
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config()  # poll_interval 1h: only a wake-up makes the daemon cycle soon
    yield lab


def test_a_hold_set_beside_the_daemon_defers_a_new_revision_and_unhold_applies_it_at_once(
    lab: DeviceLab,
    pages: dict[str, str],
    daemons: list,
    docker_client: docker.DockerClient,
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    daemons.append(lab.start_daemon())
    eventually(lambda: http_get(port, timeout=0.5) == "hold v1", "v1 served")

    held = lab.cli("hold", "--reason", "stock count")
    assert held.code == 0, held.err
    eventually(lambda: metric(scrape(lab), "reconciler_hold") == 1, "reconciler_hold 1")
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])}, message="v2")
    assert lab.cli("sync").code == 0
    eventually(
        lambda: [p["kind"] for p in lab.status()["pending_revisions"]] == ["hold"],
        "v2 pending on the hold",
    )
    assert http_get(port) == "hold v1"
    text = lab.cli("status").out
    assert "hold: new revisions wait" in text and "stock count" in text

    assert lab.cli("unhold").code == 0  # wakes the daemon: no poll interval to wait out

    eventually(lambda: http_get(port, timeout=0.5) == "hold v2", "v2 served after unhold")
    # The cycle records its metrics and pending revisions once it is done.
    eventually(lambda: metric(scrape(lab), "reconciler_hold") == 0, "reconciler_hold 0")
    assert lab.status()["pending_revisions"] == []
    assert len(managed(docker_client, lab.namespace)) == 1
