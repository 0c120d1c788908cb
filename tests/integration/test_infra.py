"""The test infrastructure itself, against its real parts: engine, busybox images, registry."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import docker
import docker.errors
import pytest

from reconciler import model
from tests.infra.engine import EngineLayout, acquire, answers
from tests.infra.registry import free_port

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


def test_a_second_lease_reuses_the_running_engine_and_leaves_it_running(docker_host):
    lease = acquire()
    try:
        assert lease.url == docker_host
        assert not lease.started_here
    finally:
        assert lease.release() is False  # this session still uses it
    assert answers(docker_host)


@pytest.mark.skipif("DOCKER_HOST" in os.environ, reason="the session uses DOCKER_HOST itself")
def test_a_docker_host_that_does_not_answer_falls_back_to_the_test_socket(docker_host, tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/nobody.sock"}
    lease = acquire(env=env, start_timeout=5)
    try:
        assert lease.url == EngineLayout.from_env(env).url == docker_host
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
    sleeper.stop(timeout=10)
    assert time.monotonic() - started < 3  # SIGTERM ends it; no wait for the kill


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
    images, registry, docker_client
):
    ref = registry.push(images.sleeper("infra-down"), "infra/down:v1")
    registry.stop()
    try:
        with pytest.raises(docker.errors.APIError, match=registry.address):
            docker_client.images.pull(ref)
    finally:
        registry.start()
    assert docker_client.images.pull(ref).id == docker_client.images.get(ref).id
