"""In-memory stand-ins for the ports (`reconciler.ports`), so the cycle is tested in milliseconds.

Owns: `FleetSimulator`, a fleet repo and the device's view of it (a `FleetSource`, in the spirit
of python-tuf's RepositorySimulator: `publish(files) -> commit`, `release(apps) -> commit`,
remotes that can be made to fail); `FakeEngine`, a recording container engine (a
`ContainerEngine`) that keeps containers in memory with the labels `docker_engine` gives them and
can be told to fail a pull or a create, or to report a container exiting or unhealthy;
`FakeClock`; `FakeVerifier` (accept or refuse).

Each fake copies its real adapter's contract, errors included (`git_source.GitSource`,
`docker_engine.DockerEngine`); tests/integration/test_port_contracts.py runs the same checks
against the fake and the real adapter so the two cannot drift apart. Must not: import an adapter
that talks to the world (git, docker, sigstore), touch the disk or the network, or sleep.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import yaml

from reconciler import errors, model, ports
from reconciler.adapters import docker_translate as tr
from reconciler.core import manifests, release

RELEASE_PATH = release.RELEASE_PATH
DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_SHA = frozenset("0123456789abcdef")


def app_manifest(
    name: str,
    containers: Sequence[Mapping[str, object]],
    *,
    selector: Mapping[str, object] | None = None,
) -> bytes:
    """The bytes of an `apps/<name>/app.yaml`; by default the app selects every device."""
    spec: dict[str, object] = {"selector": dict(selector or {}), "containers": list(containers)}
    doc = {"apiVersion": "reconciler/v1", "kind": "App", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False).encode()


def manifest_path(app: str) -> str:
    return f"apps/{app}/app.yaml"


# --- the fleet repo and the device's view of it -------------------------------------------------


@dataclass(frozen=True)
class Head:
    """What `FleetSimulator.head` returns (a `ports.RemoteHead`)."""

    commit: str
    remote: str
    failures: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Entry:
    kind: str  # "regular file" or "symbolic link", as git_source names tree entries
    data: bytes


class FleetSimulator:
    """A fleet repo with one branch, served by `remotes` (tried in order), and the device's
    cache of it. Publishing moves the branch on every remote at once; `fail_remote` makes one
    unreachable. `calls` records every call the device made, in order."""

    def __init__(self, *, remotes: Sequence[str] = ("origin",), branch: str = "main") -> None:
        if not remotes:
            raise ValueError("at least one remote is needed")
        self.remotes = tuple(remotes)
        self.branch = branch
        self.head_commit: str | None = None
        self.calls: list[tuple[str, ...]] = []
        self._trees: dict[str, dict[str, _Entry]] = {}
        self._cached: set[str] = set()  # commits the device fetched
        self._down: dict[str, str] = {}  # remote -> why it does not answer

    # --- the publishing side (what CI does) -----------------------------------------------------

    def publish(
        self,
        files: Mapping[str, bytes | None],
        message: str = "change",
        *,
        symlinks: Mapping[str, str] | None = None,
    ) -> str:
        """Commit on top of the head: `files` written (None deletes), `symlinks` as path ->
        target. Returns the new commit id (40 hex, like git's: same parent and content, same id)."""
        tree = dict(self._trees.get(self.head_commit or "", {}))
        for path, data in files.items():
            if data is None:
                tree.pop(path, None)
            else:
                tree[path] = _Entry("regular file", data)
        for path, target in (symlinks or {}).items():
            tree[path] = _Entry("symbolic link", target.encode())
        body = [self.head_commit or "", message]
        body += [f"{p}\0{e.kind}\0{release.digest(e.data)}" for p, e in sorted(tree.items())]
        commit = hashlib.sha1("\n".join(body).encode(), usedforsecurity=False).hexdigest()
        self._trees[commit] = tree
        self.head_commit = commit
        return commit

    def release(
        self,
        apps: Mapping[str, bytes | None],
        message: str = "change",
        *,
        now: datetime = DEFAULT_NOW,
        expires_in: float = 30 * 86400,
        images: Mapping[str, Mapping[str, str]] | None = None,
        version: int | None = None,
        paused: Sequence[str] = (),
        abort: Mapping[str, str] | None = None,
    ) -> str:
        """What `reconciler release` does: commit the app manifests (app name -> bytes, None
        deletes), then pin every manifest of that commit in the next release and commit it.
        `images` is keyed by app name; `version` overrides the next version (to forge one);
        `paused` (app names) and `abort` (app name -> full revision) are the rollout control
        `.fleet/rollout.yaml` carries into the release."""
        source = self.publish({manifest_path(a): data for a, data in apps.items()}, message)
        tree = self._trees[source]
        files = {p: e.data for p, e in tree.items() if manifests.is_manifest_path(p)}
        previous_entry = tree.get(RELEASE_PATH)
        previous = release.parse(previous_entry.data) if previous_entry is not None else None
        built = release.build(
            files,
            previous=previous,
            now=now,
            source_commit=source,
            expires_in=expires_in,
            images={manifest_path(a): refs for a, refs in (images or {}).items()},
            paused=[manifest_path(a) for a in paused],
            abort={manifest_path(a): r for a, r in (abort or {}).items()},
        )
        if version is not None:
            built = replace(built, version=version)
        return self.publish({RELEASE_PATH: release.serialize(built)}, f"release: {message}")

    def files_at(self, commit: str) -> dict[str, bytes]:
        """The regular files of a published commit (to replay an old state as a new commit)."""
        return {p: e.data for p, e in self._trees[commit].items() if e.kind == "regular file"}

    def fail_remote(self, remote: str | None = None, reason: str = "connection refused") -> None:
        """Make `remote` (None: every remote) stop answering."""
        for name in self.remotes if remote is None else (remote,):
            self._down[name] = reason

    def heal(self) -> None:
        """Every remote answers again."""
        self._down.clear()

    # --- ports.FleetSource (what the device does) -----------------------------------------------

    def head(self) -> Head:
        self.calls.append(("head",))
        failures: list[tuple[str, str]] = []
        for remote in self.remotes:
            if remote in self._down:
                failures.append((remote, self._down[remote]))
            elif self.head_commit is None:
                failures.append((remote, f"branch {self.branch} not found on {remote}"))
            else:
                return Head(self.head_commit, remote, tuple(failures))
        raise errors.RemotesFailed(f"head of branch {self.branch}", failures)

    def ensure(self, commit: str, remote: str) -> None:
        sha = _check_sha(commit)
        self.calls.append(("ensure", sha, remote))
        if sha in self._cached:
            return  # no network for a commit the cache holds
        if remote not in self.remotes:
            raise ValueError(f"remote {remote!r} is not one of {list(self.remotes)}")
        failures: list[tuple[str, str]] = []
        for candidate in (remote, *(r for r in self.remotes if r != remote)):
            if candidate in self._down:
                failures.append((candidate, self._down[candidate]))
                continue
            self.calls.append(("fetch", candidate))
            if self.head_commit is not None:
                self._cached.add(self.head_commit)  # a shallow fetch brings the branch tip
            if sha in self._cached:
                return
            reason = f"branch {self.branch} no longer points at {sha} (moved since the query)"
            failures.append((candidate, reason))
        raise errors.RemotesFailed(f"fetch {sha} of branch {self.branch}", failures)

    def read(self, commit: str, path: str, *, max_bytes: int) -> bytes | None:
        sha, parts = _check_sha(commit), _split(path)
        self.calls.append(("read", sha, path))
        if sha not in self._cached:
            raise errors.FetchError(f"commit {sha} is not in the cache (fake)")
        tree = self._trees[sha]
        for depth in range(1, len(parts)):
            above = tree.get("/".join(parts[:depth]))
            if above is not None and above.kind == "regular file":
                return None  # "a/b" where "a" is a file: no such path
            if above is not None:
                where = "/".join(parts[:depth])
                raise errors.FileRejected(path, f"{where} is a {above.kind}; it is never followed")
        entry = tree.get(path)
        if entry is None:
            if any(p.startswith(f"{path}/") for p in tree):
                raise errors.FileRejected(path, "is a directory, not a regular file")
            return None
        if entry.kind == "symbolic link":
            raise errors.FileRejected(path, "is a symbolic link; links are never followed")
        if len(entry.data) > max_bytes:
            raise errors.FileRejected(
                path, f"is {len(entry.data)} bytes, over the limit of {max_bytes}"
            )
        return entry.data

    def close(self) -> None:
        self.calls.append(("close",))

    @property
    def fetches(self) -> int:
        """Fetches the device made (an unchanged poll makes none)."""
        return sum(1 for call in self.calls if call[0] == "fetch")


def _check_sha(commit: str) -> str:
    if len(commit) not in (40, 64) or not set(commit) <= _SHA:
        raise ValueError(f"commit: expected a full hex object id, got {commit!r}")
    return commit


def _split(path: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or any(p in {"", ".", ".."} or "\0" in p for p in parts):
        raise errors.FileRejected(path, "is not a relative path inside the repo")
    return parts


# --- the container engine -----------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a container of one image behaves once started, as `inspect_health` reports it.

    `crash_loop`: the engine keeps restarting it (each inspect sees it "restarting", with one
    more restart). `exec_exit_code`: what an `exec` check exits with (None: times out).
    """

    status: str = "running"
    health: str | None = None  # State.Health.Status: None (no HEALTHCHECK), healthy, unhealthy
    exit_code: int = 0
    crash_loop: bool = False
    exec_exit_code: int | None = 0


RUNS = Behaviour()
UNHEALTHY = Behaviour(health="unhealthy")


def exits(code: int = 1) -> Behaviour:
    return Behaviour(status="exited", exit_code=code)


@dataclass
class FakeContainer:
    """One container the fake engine holds; `labels` as `docker_translate` makes them."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    spec: model.ContainerSpec
    env: dict[str, str]
    behaviour: Behaviour
    status: str = "running"
    health: str | None = None
    restart_count: int = 0
    exit_code: int = 0

    @property
    def app(self) -> str:
        return self.labels.get(model.LABEL_APP, "")


# Calls that change the engine; the rest only read it.
WRITES = frozenset({"pull", "create_and_start", "replace", "remove_container", "remove_networks"})


class FakeEngine:
    """A container engine in memory, for one namespace: images, containers, app networks and
    named volumes. `calls` records every call as (method, subject). Containers are reported
    by `list_managed` through `docker_translate.observed`, exactly as the Docker adapter
    reports a container list (a running container shows restart count and exit code 0)."""

    def __init__(self, *, namespace: str = "", images: Sequence[str] = ()) -> None:
        self.namespace = namespace
        self.images: set[str] = set(images)
        self.containers: dict[str, FakeContainer] = {}  # id -> container
        self.networks: set[str] = set()
        self.volumes: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.closed = False
        self._behaviours: dict[str, Behaviour] = {}
        self._pull_failures: dict[str | None, str] = {}  # image (None: every image) -> reason
        # (app, container) -> (reason, whether the engine was unavailable rather than refusing)
        self._create_failures: dict[tuple[str, str | None], tuple[str, bool]] = {}
        self._unreachable: str | None = None
        self._ids = itertools.count(1)

    # --- what a test tells it -------------------------------------------------------------------

    def behave(self, image: str, behaviour: Behaviour) -> None:
        """Containers started from `image` from now on behave so."""
        self._behaviours[image] = behaviour

    def fail_pull(self, image: str | None = None, reason: str = "registry unreachable") -> None:
        """Pulls of `image` (None: of every image) fail."""
        self._pull_failures[image] = reason

    def fail_create(
        self,
        app: str,
        container: str | None = None,
        reason: str = "no space left on device",
        *,
        unavailable: bool = False,
    ) -> None:
        """Creating (or replacing) `container` of `app` (None: any of its containers) fails: the
        engine refuses it, or with `unavailable` goes away (a dockerd restarting mid-apply)."""
        self._create_failures[(app, container)] = (reason, unavailable)

    def go_down(self, reason: str = "connection refused") -> None:
        """Every call fails, as with a stopped dockerd."""
        self._unreachable = reason

    def heal(self) -> None:
        """No more failures: pulls, creates and the engine itself work again."""
        self._pull_failures.clear()
        self._create_failures.clear()
        self._unreachable = None

    def stop_by_hand(self, name: str, exit_code: int = 137) -> None:
        """Someone ran `docker stop` on `name` (drift)."""
        found = self._by_name(name)
        found.status, found.exit_code = "exited", exit_code

    def remove_by_hand(self, name: str) -> None:
        """Someone ran `docker rm -f` on `name` (drift)."""
        del self.containers[self._by_name(name).id]

    def add_foreign(self, name: str, image: str, labels: Mapping[str, str]) -> str:
        """A container this reconciler does not own (another namespace, or no labels)."""
        spec = model.ContainerSpec(name=name, image=image)
        found = FakeContainer(self._new_id(), name, image, dict(labels), spec, {}, RUNS)
        self.containers[found.id] = found
        return found.id

    # --- reading what it holds ------------------------------------------------------------------

    @property
    def writes(self) -> list[tuple[str, str]]:
        """The recorded calls that changed something, in order."""
        return [call for call in self.calls if call[0] in WRITES]

    def named(self, name: str) -> FakeContainer:
        return self._by_name(name)

    def running_images(self, app: str) -> dict[str, str]:
        """Container name -> image of `app`'s containers."""
        return {
            c.labels[model.LABEL_CONTAINER]: c.image
            for c in self.containers.values()
            if c.app == app and tr.is_ours(c.labels, namespace=self.namespace)
        }

    # --- ports.ContainerEngine ------------------------------------------------------------------

    def list_managed(self) -> list[model.ObservedContainer]:
        self._record("list_managed", "")
        result = []
        for found in self.containers.values():
            summary = {
                "Id": found.id,
                "Names": [f"/{found.name}"],
                "Labels": dict(found.labels),
                "Image": found.image,
                "State": found.status,
                "Status": (
                    "Up 1 second"
                    if found.status == "running"
                    else f"Exited ({found.exit_code}) 1 second ago"
                ),
            }
            inspect = None
            if tr.needs_inspect(summary):
                inspect = {
                    "State": {"Status": found.status, "ExitCode": found.exit_code},
                    "RestartCount": found.restart_count,
                }
            observed = tr.observed(summary, namespace=self.namespace, inspect=inspect)
            if observed is not None:
                result.append(observed)
        return sorted(result, key=lambda c: (c.app, c.container, c.name))

    def list_volumes(self) -> list[str]:
        self._record("list_volumes", "")
        return sorted(self.volumes)

    def close(self) -> None:
        self.closed = True

    def inspect_health(self, container_id: str) -> ports.HealthInfo:
        self._record("inspect_health", container_id)
        found = self._ours(container_id, f"inspect container {container_id[:12]}")
        if found.behaviour.crash_loop and found.status != "exited":
            # The engine restarted it again since the last look, and it died again.
            found.restart_count += 1
            found.status = "restarting"
        return ports.HealthInfo(
            status=found.status,
            health=found.health,
            restart_count=found.restart_count,
            exit_code=found.exit_code,
        )

    def exec_run(
        self, container_id: str, cmd: Sequence[str], *, timeout: float = 10.0
    ) -> int | None:
        self._record("exec_run", container_id)
        found = self._ours(container_id, f"exec {list(cmd)!r} in container {container_id[:12]}")
        if found.status != "running":
            raise self._error(f"exec in container {container_id[:12]}", "is not running")
        return found.behaviour.exec_exit_code

    def image_present(self, ref: str) -> bool:
        self._record("image_present", ref)
        self._check_reachable(f"inspect image {ref}")
        return ref in self.images

    def pull(self, ref: str, *, progress: ports.ProgressFn | None = None) -> None:
        self._record("pull", ref)
        self._check_reachable(f"pull {ref}")
        reason = self._pull_failures.get(ref, self._pull_failures.get(None))
        if reason is not None:
            raise self._error(f"pull {ref}", reason)
        self.images.add(ref)
        if progress is not None:
            progress(f"{ref} Pull complete")

    def create_and_start(
        self, desired: model.DesiredContainer, *, env_file_values: Mapping[str, str] | None = None
    ) -> str:
        name = tr.container_name(self.namespace, desired.app, desired.spec.name)
        self._record("create_and_start", name)
        self._check_reachable(f"create container {name}")
        if any(c.name == name for c in self.containers.values()):
            raise self._error(f"create container {name}", f'the name "/{name}" is already in use')
        return self._create(desired, name, env_file_values)

    def replace(
        self,
        old: model.ObservedContainer,
        desired: model.DesiredContainer,
        *,
        env_file_values: Mapping[str, str] | None = None,
    ) -> str:
        final = tr.container_name(self.namespace, desired.app, desired.spec.name)
        self._record("replace", final)
        self._ours(old.id, f"replace container {old.name}")
        # The new container is created before the old one is stopped: a failed create leaves
        # the old one as it was (DockerEngine.replace).
        new_id = self._create(desired, f"{final}_{desired.spec_digest[:12]}", env_file_values)
        del self.containers[old.id]
        self.containers[new_id].name = final
        return new_id

    def remove_container(self, observed: model.ObservedContainer) -> None:
        self._record("remove_container", observed.name)
        self._ours(observed.id, f"remove container {observed.name}")
        del self.containers[observed.id]

    def remove_unused_networks(self, apps: Sequence[str]) -> None:
        self._record("remove_networks", ",".join(apps))
        for app in apps:
            if not any(c.app == app for c in self.containers.values()):
                self.networks.discard(tr.network_name(self.namespace, app))

    # --- internals ------------------------------------------------------------------------------

    def _create(
        self, desired: model.DesiredContainer, name: str, env: Mapping[str, str] | None
    ) -> str:
        doing = f"create container {name}"
        spec = desired.spec
        failure = self._create_failures.get(
            (desired.app, spec.name), self._create_failures.get((desired.app, None))
        )
        if failure is not None:
            raise self._error(doing, failure[0], unavailable=failure[1])
        if spec.image not in self.images:
            raise self._error(doing, f"No such image: {spec.image}")
        args = tr.create_args(desired, namespace=self.namespace, name=name, env_file_values=env)
        if args.network is not None:
            self.networks.add(args.network)
        self.volumes.update(args.volumes)
        behaviour = self._behaviours.get(spec.image, RUNS)
        found = FakeContainer(
            id=self._new_id(),
            name=name,
            image=spec.image,
            labels=tr.container_labels(desired, namespace=self.namespace),
            spec=spec,
            env=dict(env or {}),
            behaviour=behaviour,
            status=behaviour.status,
            health=behaviour.health,
            exit_code=behaviour.exit_code,
        )
        self.containers[found.id] = found
        return found.id

    def _ours(self, container_id: str, doing: str) -> FakeContainer:
        self._check_reachable(doing)
        found = self.containers.get(container_id)
        if found is None:
            raise self._error(doing, f"No such container: {container_id}")
        if not tr.is_ours(found.labels, namespace=self.namespace):
            raise self._error(
                doing,
                f"container {container_id[:12]} is not managed by this reconciler "
                f'(namespace "{self.namespace}"): left untouched',
            )
        return found

    def _by_name(self, name: str) -> FakeContainer:
        for found in self.containers.values():
            if found.name == name:
                return found
        raise KeyError(f"no container named {name}")

    def _new_id(self) -> str:
        return hashlib.sha256(f"container {next(self._ids)}".encode()).hexdigest()

    def _record(self, method: str, subject: str) -> None:
        self.calls.append((method, subject))

    def _check_reachable(self, doing: str) -> None:
        if self._unreachable is not None:
            raise self._error(doing, self._unreachable, unavailable=True)

    def _error(self, doing: str, reason: str, *, unavailable: bool = False) -> errors.EngineError:
        return errors.EngineError(
            f"docker engine (fake): {doing}: {reason}", unavailable=unavailable
        )


# --- time and trust -----------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when told: `advance`, or `sleep` (which returns at once)."""

    def __init__(self, start: datetime = DEFAULT_NOW) -> None:
        self._now = start
        self._monotonic = 1000.0
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds


CI_SIGNER = ports.Signer(
    identity="https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main",
    issuer="https://token.actions.example.test",
)


@dataclass
class FakeVerifier:
    """Accepts every release as signed by `signer`, or refuses every one with `reason`."""

    accept: bool = True
    reason: str = "invalid_signature"
    signer: ports.Signer = CI_SIGNER
    verified: list[bytes] = field(default_factory=list)  # the artifacts it was asked about

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> ports.Signer:
        self.verified.append(artifact)
        if not self.accept:
            raise errors.VerificationError(f"{file}: refused (fake verifier)", reason=self.reason)
        return self.signer


if TYPE_CHECKING:  # mypy checks that each fake satisfies its port
    _source: ports.FleetSource = FleetSimulator()
    _head: ports.RemoteHead = Head("0" * 40, "origin")
    _engine: ports.ContainerEngine = FakeEngine()
    _clock: ports.Clock = FakeClock()
    _verifier: ports.ReleaseVerifier = FakeVerifier()
