"""`reconciler once` against a real engine, registry and Git repo, driven as an operator would."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from reconciler import model
from testkit.cli import CONSOLE_SCRIPT
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

# Event actions that only read a container; anything else is a write.
READING = {"exec_create", "exec_start", "exec_die", "top", "attach", "resize"}


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    return DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)


@pytest.fixture(scope="module")
def web_images(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    """Two versions of a web page, pushed to the loopback registry by tag."""
    refs = {}
    for version in ("v1", "v2"):
        local = images.httpd(f"lab-web-{version}", f"hello {version}")
        registry.push(local, f"lab/web:{version}")
        refs[version] = f"{registry.address}/lab/web:{version}"
    return refs


def test_first_apply_serves_the_app_and_a_second_cycle_changes_nothing(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})

    first = lab.once()
    assert first.code == 0, first.err
    assert first.out.startswith("converged")
    assert http_get(port) == "hello v1"
    (container,) = managed(docker_client, lab.namespace)
    assert container.labels[model.LABEL_APP] == "web"
    assert container.name == f"{lab.namespace}_web_web"

    before = time.time()
    second = lab.once()
    assert second.code == 0, second.err
    assert second.out.startswith("unchanged")
    actions = container_actions(docker_client, lab.namespace, before)
    assert [a for a in actions if a not in READING] == []
    assert [c.id for c in managed(docker_client, lab.namespace)] == [container.id]


def test_a_new_image_replaces_the_container(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})
    assert lab.once().code == 0
    lab.publish({"web": app_manifest("web", [web(web_images["v2"], port)])})

    run = lab.once()

    assert run.code == 0, run.err
    assert http_get(port) == "hello v2"
    replaced = [r for r in log_events(run.err) if r["event"] == "apply.replace"]
    assert replaced and replaced[0]["app"] == "web" and replaced[0]["reason"]
    assert len(managed(docker_client, lab.namespace)) == 1
    # One container replaced is one change (its image pull is part of it).
    assert run.out.startswith("converged: 1 change(s) applied"), run.out
    (done,) = [r for r in log_events(run.err) if r["event"] == "cycle.done"]
    assert done["changes"] == 1


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every file and directory under `root`: mtime, inode, size and (files) content."""
    seen = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path.relative_to(root))] = (info.st_mtime_ns, info.st_ino, info.st_size, content)
    return seen


def test_an_unchanged_poll_writes_nothing_under_state_dir(
    lab: DeviceLab, web_images: dict[str, str]
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})
    assert lab.once().code == 0
    assert (lab.state_dir / "mirror.git" / "config").is_file()  # the Git mirror is in there too
    before = snapshot(lab.state_dir)
    time.sleep(0.05)  # a rewrite within the same mtime tick would still change the inode

    second = lab.once()

    assert second.code == 0 and second.out.startswith("unchanged"), second.err
    after = snapshot(lab.state_dir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []
    # The fetch itself is still known: it was fetched (the log), status names the head.
    assert any(r["event"] == "cycle.done" for r in log_events(second.err))
    assert lab.status()["last_fetch_commit"] == lab.fleet.git("rev-parse", "HEAD").strip()


def test_an_env_change_and_an_env_file_change_on_the_device_replace_the_container(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    port = lab.free_port()
    env_file = lab.root / "secrets.env"
    env_file.write_text("TOKEN=one\n")
    spec = web(web_images["v1"], port, env={"MODE": "a"}, env_file=str(env_file))
    lab.publish({"web": app_manifest("web", [spec])})
    assert lab.once().code == 0
    (first,) = managed(docker_client, lab.namespace)
    assert {"MODE=a", "TOKEN=one"} <= set(first.attrs["Config"]["Env"])

    lab.publish({"web": app_manifest("web", [{**spec, "env": {"MODE": "b"}}])})
    assert lab.once().code == 0
    (second,) = managed(docker_client, lab.namespace)
    assert second.id != first.id
    assert "MODE=b" in second.attrs["Config"]["Env"]

    env_file.write_text("TOKEN=two\n")  # a secret rotated on the device, nothing in Git moved
    assert lab.once().code == 0
    (third,) = managed(docker_client, lab.namespace)
    assert third.id != second.id
    assert "TOKEN=two" in third.attrs["Config"]["Env"]


def test_an_app_dropped_by_the_release_is_pruned_and_its_volume_kept(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    port = lab.free_port()
    spec = web(web_images["v1"], port, volumes=["data:/data"])
    lab.publish(
        {
            "web": app_manifest("web", [spec]),
            "other": app_manifest("other", [web(web_images["v2"], lab.free_port())]),
        }
    )
    assert lab.once().code == 0
    assert len(managed(docker_client, lab.namespace)) == 2

    lab.publish({"web": None})
    run = lab.once()

    assert run.code == 0, run.err
    assert [c.labels[model.LABEL_APP] for c in managed(docker_client, lab.namespace)] == ["other"]
    assert any(r["event"] == "apply.remove" for r in log_events(run.err))
    volume = docker_client.volumes.get(f"{lab.namespace}_data")  # kept, namespaced
    assert volume.name in lab.status()["volumes"]


def test_a_container_without_our_labels_is_never_touched(
    lab: DeviceLab,
    web_images: dict[str, str],
    docker_client: docker.DockerClient,
    images: ImageFactory,
):
    foreign_name = f"{lab.namespace}_web_web"  # even with the name we would use
    foreign = docker_client.containers.run(
        images.sleeper("lab-foreign"),
        name=f"{foreign_name}-foreign",
        detach=True,
        labels={"owner": "someone-else"},
    )
    try:
        lab.publish({"web": app_manifest("web", [web(web_images["v1"], lab.free_port())])})
        assert lab.once().code == 0
        lab.publish({"web": None})
        assert lab.once().code == 0
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)


def test_drift_is_corrected_even_when_git_did_not_move(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})
    assert lab.once().code == 0

    (container,) = managed(docker_client, lab.namespace)
    container.stop(timeout=1)
    assert lab.once().code == 0
    assert http_get(port) == "hello v1"

    (container,) = managed(docker_client, lab.namespace)
    container.remove(force=True)
    run = lab.once()
    assert run.code == 0, run.err
    assert http_get(port) == "hello v1"
    assert len(managed(docker_client, lab.namespace)) == 1


def test_with_every_remote_down_the_device_keeps_its_state_and_corrects_drift(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    web_images: dict[str, str],
    docker_client: docker.DockerClient,
):
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})
    assert lab.once().code == 0

    gone = tmp_path / "gone"
    lab.source_url = str(gone)
    lab.mirrors = [f"file://{tmp_path}/also-gone"]
    lab.write_config()
    (container,) = managed(docker_client, lab.namespace)
    container.stop(timeout=1)

    run = lab.once()

    assert run.code == 1
    assert "fetch failed" in run.out
    assert str(gone) in run.out
    assert http_get(port) == "hello v1"  # drift corrected from local state, offline
    status = lab.status()
    assert "fetch failed" in str(status["last_error"])
    assert status["apps"][0]["name"] == "web"


def test_a_mirror_serves_when_the_primary_is_down(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    web_images: dict[str, str],
):
    lab = DeviceLab(
        tmp_path,
        docker_host=docker_host,
        namespace=namespace,
        source_url=str(tmp_path / "primary-is-down"),
    )
    lab.mirrors = [str(lab.fleet.root)]
    lab.write_config()
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})

    run = lab.once()

    assert run.code == 0, run.err
    assert http_get(port) == "hello v1"


def test_a_failed_pull_touches_nothing(
    lab: DeviceLab,
    web_images: dict[str, str],
    docker_client: docker.DockerClient,
    registry: LocalRegistry,
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(web_images["v1"], port)])})
    assert lab.once().code == 0
    (before,) = managed(docker_client, lab.namespace)
    missing = f"{registry.address}/lab/web:not-pushed"
    lab.publish(
        {
            "web": app_manifest("web", [web(missing, port)]),
            "extra": app_manifest("extra", [web(web_images["v2"], lab.free_port())]),
        }
    )

    run = lab.once()

    assert run.code == 1
    assert "not-pushed" in run.out
    (after,) = managed(docker_client, lab.namespace)  # "extra" was not started either
    assert after.id == before.id
    assert http_get(port) == "hello v1"
    assert lab.status()["apps"][0]["revision"] == before.labels[model.LABEL_REVISION]


def test_a_label_change_on_the_device_deselects_an_app(
    lab: DeviceLab, web_images: dict[str, str], docker_client: docker.DockerClient
):
    selector = {"matchLabels": {"role": "gateway"}}
    lab.publish(
        {"web": app_manifest("web", [web(web_images["v1"], lab.free_port())], selector=selector)}
    )
    assert lab.once().code == 0
    assert len(managed(docker_client, lab.namespace)) == 1

    (lab.labels_dir / "10-role.yaml").write_text("role: sensor\n")
    run = lab.once()

    assert run.code == 0, run.err
    assert managed(docker_client, lab.namespace) == []


def test_two_namespaces_share_one_engine_without_touching_each_other(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    web_images: dict[str, str],
    docker_client: docker.DockerClient,
):
    other_namespace = f"{namespace}-b"
    first = DeviceLab(tmp_path / "a", docker_host=docker_host, namespace=namespace)
    second = DeviceLab(tmp_path / "b", docker_host=docker_host, namespace=other_namespace)
    try:
        first.publish({"web": app_manifest("web", [web(web_images["v1"], first.free_port())])})
        second.publish({"web": app_manifest("web", [web(web_images["v2"], second.free_port())])})
        assert first.once().code == 0
        assert second.once().code == 0
        (theirs,) = managed(docker_client, other_namespace)

        first.publish({"web": None})
        assert first.once().code == 0

        assert managed(docker_client, namespace) == []
        (still,) = managed(docker_client, other_namespace)
        assert still.id == theirs.id and still.status == "running"
    finally:
        for container in managed(docker_client, other_namespace):
            container.remove(force=True)
        for network in docker_client.networks.list(
            filters={"label": f"{model.LABEL_NAMESPACE}={other_namespace}"}
        ):
            network.remove()


@pytest.fixture(autouse=True)
def _remove_volumes(namespace: str, docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    for volume in docker_client.volumes.list(
        filters={"label": f"{model.LABEL_NAMESPACE}={namespace}"}
    ):
        volume.remove(force=True)


def test_a_release_with_resolved_images_makes_the_device_pull_by_digest(
    lab: DeviceLab,
    web_images: dict[str, str],
    docker_client: docker.DockerClient,
    docker_host: str,
):
    port = lab.free_port()
    lab.fleet.write("apps/web/app.yaml", app_manifest("web", [web(web_images["v1"], port)]))
    lab.fleet.commit("web")
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "release", str(lab.fleet.root), "--no-sign", "--resolve-images"],
        capture_output=True,
        check=False,
        env={**lab.env(), "DOCKER_HOST": docker_host},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    pinned = json.loads((lab.fleet.root / ".fleet/release.json").read_bytes())
    ref = pinned["apps"]["apps/web/app.yaml"]["images"]["web"]
    assert ref.startswith(web_images["v1"].rsplit(":", 1)[0] + "@sha256:")
    lab.fleet.commit("release")

    run = lab.once()

    assert run.code == 0, run.err
    (container,) = managed(docker_client, lab.namespace)
    assert container.attrs["Config"]["Image"] == ref
    assert http_get(port) == "hello v1"
