"""Frozen values shared by the pure core and the adapters.

Pure: no I/O. Parsing lives in `manifests`/`settings`/`release`; these are the shapes they return
and the planner, selection, policy and engine adapter consume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Literal

# Labels SPEC 3.2 names; nothing without them is ever stopped or removed.
LABEL_APP = "reconciler.app"
LABEL_CONTAINER = "reconciler.container"
LABEL_REVISION = "reconciler.revision"
LABEL_NAMESPACE = "reconciler.namespace"
# Ours in addition: the digest of everything the container was created from.
LABEL_SPEC_DIGEST = "reconciler.spec-digest"

RestartPolicy = Literal["no", "always", "on-failure", "unless-stopped"]
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry; `values` is empty for Exists/DoesNotExist."""

    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selector:
    """Kubernetes label selector; the empty selector matches every device."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    match_expressions: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class PortMapping:
    """`[host_ip:]host_port:container_port[/protocol]`."""

    host_port: int
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = ""  # "" = every address


@dataclass(frozen=True)
class VolumeMount:
    """`source:target[:ro|rw]`; a source starting with `/` is a host bind, else a named volume."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


@dataclass(frozen=True)
class DeviceMapping:
    """`host_path[:container_path[:permissions]]`, permissions a subset of `rwm`."""

    host_path: str
    container_path: str
    permissions: str = "rwm"


HealthKind = Literal["http", "tcp", "exec", "docker"]  # manifests accept exactly these


@dataclass(frozen=True)
class HealthCheck:
    """Exactly one kind: `http` (host port + path), `tcp` (host port), `exec`, `docker`.

    `interval`: seconds between probes; `start_period`: seconds after the health wait begins in
    which failed probes do not count; `failure_threshold`: failed probes in a row (after the
    start period) that make the container unhealthy at once (SPEC 2.1).
    """

    kind: HealthKind
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    interval: float = 2.0
    start_period: float = 0.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class ContainerSpec:
    """One entry of `spec.containers`, validated and normalised."""

    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str | None = None
    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs
    env_file: str | None = None  # a path on the device, read there, never in Git
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    devices: tuple[DeviceMapping, ...] = ()
    restart: RestartPolicy = "unless-stopped"
    memory: int | None = None  # bytes
    cpus: float | None = None
    health: HealthCheck | None = None
    privileged: bool = False
    network_mode: Literal["bridge", "host"] = "bridge"  # bridge = the app's own network


@dataclass(frozen=True)
class Wave:
    """A rollout wave: `percent` of devices once `after` seconds passed since the app's `since`."""

    percent: int
    after: float = 0.0


@dataclass(frozen=True)
class AppManifest:
    """A validated `apps/<app>/app.yaml`; `revision` is the sha256 hex of the file's bytes."""

    name: str
    path: str
    revision: str
    selector: Selector
    containers: tuple[ContainerSpec, ...]
    waves: tuple[Wave, ...] = ()
    urgent: bool = False  # spec.rollout.urgent: new revisions ignore maintenance windows, holds


@dataclass(frozen=True)
class DesiredContainer:
    """One container the device should run, as the planner needs it.

    `spec_digest` covers everything the container is created from (spec, resolved image,
    env_file contents, namespace), so a difference in any of them means replace.
    `order` is the index in the app's `containers` (start order).
    """

    app: str
    revision: str
    spec: ContainerSpec
    spec_digest: str
    order: int = 0


@dataclass(frozen=True)
class ObservedContainer:
    """A managed container as the engine reports it (found by our labels)."""

    id: str
    name: str
    app: str
    container: str
    revision: str
    namespace: str
    spec_digest: str
    image: str
    status: str  # docker's State.Status: created, running, restarting, paused, exited, dead
    restart_count: int = 0
    exit_code: int = 0
    labels: tuple[tuple[str, str], ...] = field(default=())


class ActionKind(StrEnum):
    """What the executor does with one container; the order here is the execution order."""

    PULL = "pull"
    CREATE = "create"
    REPLACE = "replace"
    REMOVE = "remove"
    KEEP = "keep"


@dataclass(frozen=True)
class Action:
    """One step of a plan, with the reason a person reads in logs and `plan` output."""

    kind: ActionKind
    app: str
    container: str  # "" for a pull
    reason: str
    image: str = ""
    desired: DesiredContainer | None = None  # for create/replace
    observed: ObservedContainer | None = None  # for replace/remove/keep


def spec_digest(spec: ContainerSpec, *, namespace: str, extra: dict[str, str] | None = None) -> str:
    """Stable sha256 of a container spec plus what it is created with beyond the manifest.

    `extra` carries device-side inputs (e.g. the sha256 of the env_file's contents) so a changed
    secret replaces the container. `health` is left out: changing a check does not need a new
    container.
    """
    body = asdict(spec)
    body.pop("health", None)
    payload = {"spec": body, "namespace": namespace, "extra": dict(sorted((extra or {}).items()))}
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class DevicePolicy:
    """Device-side limits (config `policy`), enforced even on signed manifests."""

    allowed_registries: tuple[str, ...] = ()  # empty = any
    require_digest: bool = False
    allow_privileged: bool = False
    allow_host_network: bool = False
    allowed_host_paths: tuple[str, ...] = ()  # bind mounts and devices must be under one
