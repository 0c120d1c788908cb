"""Fixtures with real parts for integration tests: Docker engine, SDK client, images, registry;
and `run_cli`, the CLI in-process, for tests/cli and tests/unit.

All fixtures are lazy: nothing starts until an integration test asks for one, so unit tests
never touch an engine. `docker_host` reuses an answering engine (DOCKER_HOST, then
unix:///run/reconciler-test/docker.sock) and starts dockerd there only when none answers; the
session that ends last stops an engine the tests started, never one the demo started or reused
(see testkit/engine.py).

When an engine cannot be had here (not root, dockerd or busybox-static or docker-registry
missing) the tests skip, except under CI (env CI set), where they fail: CI never skips them.
RECONCILER_TEST_RUN_DIR / RECONCILER_TEST_DATA_ROOT move the test engine's socket dir and data
root (to exercise the start path beside a running engine, in another network namespace).

Every test that uses the engine runs twice, on Docker and on Podman's Docker-compatible API
(`engine_kind`; RECONCILER_TEST_ENGINES=docker or =podman picks one). A test that cannot hold on
Podman carries `@pytest.mark.not_on_podman("reason")`: its Podman variant is reported as skipped
with that reason. The README lists every such difference.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from reconciler import cli
from testkit.cli import Run
from testkit.engine import (
    DOCKER,
    PODMAN,
    EngineLease,
    EngineStartError,
    EngineUnavailable,
    acquire,
)
from testkit.images import BusyboxUnusable, ImageFactory, check_busybox
from testkit.registry import LocalRegistry, RegistryUnavailable

if TYPE_CHECKING:
    import docker

ENGINES_ENV = "RECONCILER_TEST_ENGINES"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: integration tests must run there, not skip)")
    pytest.skip(reason)


def engines_under_test() -> list[str]:
    """The engines the engine-facing tests run on: RECONCILER_TEST_ENGINES (comma-separated),
    by default both."""
    chosen = os.environ.get(ENGINES_ENV, f"{DOCKER},{PODMAN}")
    engines = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = sorted(set(engines) - {DOCKER, PODMAN})
    if unknown or not engines:
        raise pytest.UsageError(f"{ENGINES_ENV}={chosen!r}: name docker, podman or both")
    return engines


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "not_on_podman(reason): this test cannot hold on Podman, for the reason given (shown "
        "as a skip of its podman variant, never silent)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The packaging tests run on Docker only, once: they build and boot images (`docker
    import`, systemd as PID 1) and install the package, none of which is the engine adapter;
    the engine suites under tests/integration run on Docker and Podman. Under pytest-xdist
    (--dist loadgroup) they all run on one worker: they share the package and base images
    built once per session, and a build is minutes of CPU."""
    packaging = Path(__file__).parent / "packaging"
    kept, podman_packaging = [], []
    for item in items:
        if packaging not in item.path.parents:
            kept.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine_kind") == PODMAN:
            podman_packaging.append(item)
            continue
        item.add_marker(pytest.mark.xdist_group("packaging"))
        kept.append(item)
    if podman_packaging:
        config.hook.pytest_deselected(items=podman_packaging)
        items[:] = kept


@pytest.fixture(scope="session", params=engines_under_test())
def engine_kind(request: pytest.FixtureRequest) -> str:
    """Which engine this test runs on: every engine-facing test runs once per engine."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _podman_differences(request: pytest.FixtureRequest) -> None:
    """Skip the Podman variant of a test marked not_on_podman, showing the marked reason."""
    marker = request.node.get_closest_marker("not_on_podman")
    callspec = getattr(request.node, "callspec", None)
    if marker is not None and callspec is not None and callspec.params.get("engine_kind") == PODMAN:
        pytest.skip(f"not on Podman: {marker.args[0] if marker.args else marker.kwargs['reason']}")


@pytest.fixture(scope="session")
def engine_lease(engine_kind: str) -> Iterator[EngineLease]:
    """This session's use of an answering engine; released (maybe stopped) at session end."""
    try:
        lease = acquire(kind=engine_kind)
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
    from testkit.device_lab import remove_namespace  # imports docker: only when asked for

    name = f"t-{secrets.token_hex(4)}"
    yield name
    remove_namespace(docker_client, name)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run `reconciler.cli.main(args)` in-process; argparse's SystemExit becomes the code."""

    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run
