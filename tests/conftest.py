"""Fixtures with real parts for integration tests: Docker engine, SDK client, images, registry.

All fixtures are lazy: nothing starts until an integration test asks for one, so unit tests
never touch an engine. `docker_host` reuses an answering engine (DOCKER_HOST, then
unix:///run/reconciler-test/docker.sock) and starts dockerd there only when none answers; the
session that ends last stops an engine the tests started, never one the demo started or reused
(see tests/infra/engine.py).

When an engine cannot be had here (not root, dockerd or busybox-static or docker-registry
missing) the tests skip, except under CI (env CI set), where they fail: CI never skips them.
RECONCILER_TEST_RUN_DIR / RECONCILER_TEST_DATA_ROOT move the test engine's socket dir and data
root (to exercise the start path beside a running engine, in another network namespace).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from reconciler import model
from tests.infra.engine import EngineLease, EngineStartError, EngineUnavailable, acquire
from tests.infra.images import BusyboxUnusable, ImageFactory, check_busybox
from tests.infra.registry import LocalRegistry, RegistryUnavailable

if TYPE_CHECKING:
    import docker


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: integration tests must run there, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine_lease() -> Iterator[EngineLease]:
    """This session's use of an answering engine; released (maybe stopped) at session end."""
    try:
        lease = acquire()
    except EngineUnavailable as exc:
        _unavailable(str(exc))
    except EngineStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield lease
    finally:
        lease.release()


@pytest.fixture(scope="session")
def docker_host(engine_lease: EngineLease) -> str:
    """URL of an answering Docker engine (`unix://...` or DOCKER_HOST's value)."""
    return engine_lease.url


@pytest.fixture(scope="session")
def docker_client(engine_lease: EngineLease) -> Iterator[docker.DockerClient]:
    """A docker SDK client for `docker_host` (DOCKER_HOST's TLS settings honoured)."""
    import docker

    client = (
        docker.from_env(timeout=120)
        if engine_lease.from_env
        else docker.DockerClient(base_url=engine_lease.url, timeout=120)
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> ImageFactory:
    """Builds FROM-scratch busybox images: `.build(...)`, `.httpd`, `.exits`, `.sleeper`."""
    try:
        busybox = check_busybox()
    except BusyboxUnusable as exc:
        _unavailable(str(exc))
    return ImageFactory(docker_client, busybox=busybox)


@pytest.fixture(scope="session")
def registry(docker_client: docker.DockerClient) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1:PORT: `.address`, `.push(image, repo:tag)`, `.stop()`, `.start()`."""
    try:
        local = LocalRegistry(docker_client)
    except RegistryUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield local
    finally:
        local.close()


@pytest.fixture
def namespace(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique namespace `t-<8 hex>`; its labelled containers and networks go at teardown."""
    import docker.errors

    name = f"t-{secrets.token_hex(4)}"
    yield name
    label = {"label": f"{model.LABEL_NAMESPACE}={name}"}
    for container in docker_client.containers.list(all=True, filters=label):
        with contextlib.suppress(docker.errors.NotFound):  # the test may have removed it
            container.remove(force=True, v=True)
    for network in docker_client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
