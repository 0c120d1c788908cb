"""The ports' contracts, written once and run against each fake and its real adapter.

`FleetSource`: `FleetSimulator` and `GitSource` over a real bare repo (file URL). The fleet
tests need git only, no engine. `ContainerEngine`: `FakeEngine` and `DockerEngine` on Docker
and on Podman (the `engine_kind` fixture, given "fake" here as a third kind). When a real
adapter changes behaviour, its case here fails and the fake must follow; when the fake grows a
behaviour, its contract belongs here, so test_cycle.py never leans on something only the fake
does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from reconciler import errors, model, ports
from reconciler.adapters import docker_translate as tr
from testkit.fleet_repos import BareFleetRepo, make_repo
from tests.conftest import engines_under_test
from tests.fakes import FakeEngine, FleetSimulator, exits

MANIFEST = "apps/gw/app.yaml"
RELEASE = ".fleet/release.json"


# --- FleetSource ------------------------------------------------------------------------------


class Fleet(Protocol):
    """A fleet repo a test publishes to, and the `FleetSource` a device reads it through."""

    source: ports.FleetSource
    remote: str  # the name `head()` reports

    def publish(self, files: dict[str, bytes | None], *, symlink: str | None = None) -> str: ...
    def fail(self) -> None: ...
    def heal(self) -> None: ...


class SimulatedFleet:
    def __init__(self) -> None:
        self.simulator = FleetSimulator(remotes=("origin",))
        self.source: ports.FleetSource = self.simulator
        self.remote = "origin"

    def publish(self, files: dict[str, bytes | None], *, symlink: str | None = None) -> str:
        links = {symlink: "../elsewhere"} if symlink else None
        return self.simulator.publish(files, symlinks=links)

    def fail(self) -> None:
        self.simulator.fail_remote()

    def heal(self) -> None:
        self.simulator.heal()


class GitFleet:
    """A bare repo committed to with real git, read through `GitSource` over a file URL; made
    unreachable by moving the repo away."""

    def __init__(self, root: Path) -> None:
        from reconciler.adapters.git_source import GitSource

        self.repo: BareFleetRepo = make_repo(root / "srv" / "fleet.git")
        self.remote = self.repo.file_url
        self._away = root / "srv" / "moved.git"
        self.source: ports.FleetSource = GitSource(
            cache_dir=root / "state" / "mirror.git", urls=[self.remote], branch="main", timeout=20
        )

    def publish(self, files: dict[str, bytes | None], *, symlink: str | None = None) -> str:
        return self.repo.commit(files, symlinks={symlink: "../elsewhere"} if symlink else None)

    def fail(self) -> None:
        self.repo.path.rename(self._away)

    def heal(self) -> None:
        self._away.rename(self.repo.path)


@pytest.fixture(params=["fake", "git"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    made: Fleet = SimulatedFleet() if request.param == "fake" else GitFleet(tmp_path)
    yield made
    made.source.close()


def fetched(fleet: Fleet) -> str:
    """The head, made readable: what the cycle does before it reads."""
    head = fleet.source.head()
    fleet.source.ensure(head.commit, head.remote)
    return head.commit


def test_head_names_the_published_commit_and_ensure_makes_its_files_readable(fleet: Fleet):
    commit = fleet.publish({MANIFEST: b"name: gw\n", RELEASE: b"{}\n"})

    head = fleet.source.head()
    fleet.source.ensure(head.commit, head.remote)

    assert (head.commit, head.remote, head.failures) == (commit, fleet.remote, ())
    assert fleet.source.read(commit, MANIFEST, max_bytes=1024) == b"name: gw\n"
    assert fleet.source.read(commit, RELEASE, max_bytes=1024) == b"{}\n"


@pytest.mark.parametrize("path", ["apps/db/app.yaml", "nothing", f"{MANIFEST}/below-a-file"])
def test_read_returns_none_for_a_path_the_commit_does_not_hold(fleet: Fleet, path: str):
    fleet.publish({MANIFEST: b"name: gw\n"})
    commit = fetched(fleet)

    assert fleet.source.read(commit, path, max_bytes=1024) is None


def test_read_takes_a_file_of_exactly_max_bytes_and_refuses_one_byte_more(fleet: Fleet):
    fleet.publish({MANIFEST: b"x" * 100})
    commit = fetched(fleet)

    assert fleet.source.read(commit, MANIFEST, max_bytes=100) == b"x" * 100
    with pytest.raises(errors.RevisionRejected) as refused:
        fleet.source.read(commit, MANIFEST, max_bytes=99)
    assert isinstance(refused.value, errors.ProblemsError)
    assert "is 100 bytes, over the limit of 99" in str(refused.value)
    assert refused.value.problems[0].file == MANIFEST


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("apps/gw", "is a directory"),
        ("apps/link.yaml", "is a symbolic link"),
        ("apps/link.yaml/below", "is a symbolic link"),
        ("../outside", "not a relative path"),
        ("/etc/passwd", "not a relative path"),
    ],
)
def test_read_refuses_what_is_not_a_regular_file_in_the_repo(fleet: Fleet, path: str, why: str):
    fleet.publish({MANIFEST: b"name: gw\n"}, symlink="apps/link.yaml")
    commit = fetched(fleet)

    with pytest.raises(errors.RevisionRejected, match=why):
        fleet.source.read(commit, path, max_bytes=1024)


def test_head_with_no_remote_answering_is_a_fetch_error_naming_each_remote(fleet: Fleet):
    fleet.publish({MANIFEST: b"name: gw\n"})
    fleet.fail()

    with pytest.raises(errors.FetchError) as failed:
        fleet.source.head()

    failures = failed.value.failures  # type: ignore[attr-defined]
    assert [remote for remote, _reason in failures] == [fleet.remote]
    fleet.heal()
    assert fleet.source.head().failures == ()


def test_a_fetched_commit_is_read_without_the_network(fleet: Fleet):
    fleet.publish({MANIFEST: b"name: gw\n"})
    commit = fetched(fleet)
    fleet.fail()

    fleet.source.ensure(commit, fleet.remote)

    assert fleet.source.read(commit, MANIFEST, max_bytes=1024) == b"name: gw\n"
    fleet.heal()


def test_reading_a_commit_that_was_never_fetched_is_a_fetch_error(fleet: Fleet):
    older = fleet.publish({MANIFEST: b"name: gw\n"})
    fleet.publish({MANIFEST: b"name: gw2\n"})
    fetched(fleet)  # a shallow fetch: the tip only

    with pytest.raises(errors.FetchError):
        fleet.source.read(older, MANIFEST, max_bytes=1024)


def test_ensure_of_a_commit_the_branch_moved_away_from_fails_naming_the_remote(fleet: Fleet):
    fleet.publish({MANIFEST: b"name: gw\n"})
    head = fleet.source.head()
    fleet.publish({MANIFEST: b"name: gw2\n"})

    with pytest.raises(errors.FetchError, match="no longer points at") as failed:
        fleet.source.ensure(head.commit, head.remote)

    assert [r for r, _ in failed.value.failures] == [fleet.remote]  # type: ignore[attr-defined]


@pytest.mark.parametrize("commit", ["main", "0" * 39, "G" * 40])
def test_a_commit_that_is_not_a_full_object_id_is_a_value_error(fleet: Fleet, commit: str):
    fleet.publish({MANIFEST: b"name: gw\n"})
    fetched(fleet)

    with pytest.raises(ValueError, match="full hex object id"):
        fleet.source.read(commit, MANIFEST, max_bytes=1024)


# --- ContainerEngine --------------------------------------------------------------------------

# Every engine test runs on the fake and on each real engine; "fake" requests no real fixture.
ENGINES = pytest.mark.parametrize("engine_kind", ["fake", *engines_under_test()], scope="session")
MISSING_IMAGE = "127.0.0.1:9/contract/missing:1"  # port 9 (discard): nothing answers a pull


@dataclass
class EngineSide:
    engine: ports.ContainerEngine
    namespace: str
    image: str  # present in the engine; runs until stopped
    exiting_image: str  # present in the engine; exits with code 3 at once


@pytest.fixture
def side(engine_kind: str, request: pytest.FixtureRequest) -> Iterator[EngineSide]:
    if engine_kind == "fake":
        image, exiting = "registry.example/contract/sleeper:1", "registry.example/contract/exits:3"
        fake = FakeEngine(namespace="contract", images=[image, exiting])
        fake.behave(exiting, exits(3))
        fake.fail_pull(MISSING_IMAGE, "connection refused")
        yield EngineSide(fake, "contract", image, exiting)
        return
    from reconciler.adapters.docker_engine import DockerEngine

    namespace = request.getfixturevalue("namespace")
    images = request.getfixturevalue("images")
    image, exiting = images.sleeper("contract-sleeper"), images.exits("contract-exits", 3)
    real = DockerEngine(
        base_url=request.getfixturevalue("docker_host"), namespace=namespace, timeout=30
    )
    yield EngineSide(real, namespace, image, exiting)
    real.close()


def desired(
    side: EngineSide, *, revision: str = "r1", env: str = "", image: str | None = None
) -> model.DesiredContainer:
    spec = model.ContainerSpec(
        name="main",
        image=image or side.image,
        env=(("WHO", env),) if env else (),
        restart="no",
    )
    return model.DesiredContainer(
        app="gw",
        revision=revision,
        spec=spec,
        spec_digest=model.spec_digest(spec, namespace=side.namespace),
    )


@ENGINES
def test_a_started_container_is_listed_running_with_our_labels(side: EngineSide):
    want = desired(side)

    container_id = side.engine.create_and_start(want, env_file_values=None)

    (found,) = side.engine.list_managed()
    assert found.id == container_id
    assert found.name == tr.container_name(side.namespace, "gw", "main")
    assert (found.app, found.container, found.revision) == ("gw", "main", "r1")
    assert (found.namespace, found.spec_digest) == (side.namespace, want.spec_digest)
    assert found.status == "running"
    # Podman names a short reference in full ("docker.io/..."): only what was asked for counts.
    assert found.image.endswith(side.image)
    labels = dict(found.labels)
    assert {k: labels[k] for k in tr.OUR_LABELS} == tr.container_labels(
        want, namespace=side.namespace
    )


@ENGINES
def test_a_removed_container_is_no_longer_listed_and_cannot_be_removed_twice(side: EngineSide):
    side.engine.create_and_start(desired(side), env_file_values=None)
    (found,) = side.engine.list_managed()

    side.engine.remove_container(found)

    assert side.engine.list_managed() == []
    with pytest.raises(errors.EngineError):
        side.engine.remove_container(found)


@ENGINES
def test_replace_swaps_the_container_under_its_name(side: EngineSide):
    side.engine.create_and_start(desired(side), env_file_values=None)
    (old,) = side.engine.list_managed()
    new = desired(side, revision="r2", env="v2")

    new_id = side.engine.replace(old, new, env_file_values=None)

    (found,) = side.engine.list_managed()
    assert (found.id, found.name) == (new_id, old.name)
    assert (found.revision, found.spec_digest) == ("r2", new.spec_digest)
    assert new_id != old.id


@ENGINES
def test_a_second_container_under_a_taken_name_is_refused(side: EngineSide):
    side.engine.create_and_start(desired(side), env_file_values=None)

    with pytest.raises(errors.EngineError):
        side.engine.create_and_start(desired(side), env_file_values=None)

    assert len(side.engine.list_managed()) == 1


@ENGINES
def test_inspect_health_reports_a_running_container_without_a_healthcheck(side: EngineSide):
    container_id = side.engine.create_and_start(desired(side), env_file_values=None)

    info = side.engine.inspect_health(container_id)

    assert info == ports.HealthInfo(status="running", health=None, restart_count=0, exit_code=0)


@ENGINES
def test_a_container_that_exits_is_reported_exited_with_its_code(side: EngineSide):
    container_id = side.engine.create_and_start(
        desired(side, image=side.exiting_image), env_file_values=None
    )

    deadline = time.monotonic() + 10
    info = side.engine.inspect_health(container_id)
    while info.status != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)  # the real container needs a moment to exit
        info = side.engine.inspect_health(container_id)

    assert info == ports.HealthInfo(status="exited", health=None, restart_count=0, exit_code=3)
    (found,) = side.engine.list_managed()
    assert (found.status, found.exit_code, found.restart_count) == ("exited", 3, 0)


@ENGINES
def test_image_present_is_false_for_a_missing_image_and_a_failed_pull_leaves_it_missing(
    side: EngineSide,
):
    assert side.engine.image_present(side.image)
    assert not side.engine.image_present(MISSING_IMAGE)

    with pytest.raises(errors.EngineError):
        side.engine.pull(MISSING_IMAGE)

    assert not side.engine.image_present(MISSING_IMAGE)


@ENGINES
def test_a_container_of_a_missing_image_cannot_be_created(side: EngineSide):
    spec = model.ContainerSpec(name="main", image=MISSING_IMAGE)
    want = model.DesiredContainer(
        app="gw", revision="r1", spec=spec, spec_digest=model.spec_digest(spec, namespace="x")
    )

    with pytest.raises(errors.EngineError):
        side.engine.create_and_start(want, env_file_values=None)

    assert side.engine.list_managed() == []
