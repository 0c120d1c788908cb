"""Ports: what the device code needs of the world outside it, declared once.

Each Protocol lists every method device/ calls on an adapter, so a new adapter (Podman, a static
HTTP tree, a fake in tests) is typed against one place and mypy says what it lacks. Values that
cross a port (`HealthInfo`, `Signer`) live here too, so core/ never imports an adapter to name
them. Must not: import an adapter, do I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from reconciler import model

ProgressFn = Callable[[str], None]


# --- where desired state comes from -------------------------------------------------------------


class RemoteHead(Protocol):
    """The branch head one remote reported; `remote` is its redacted name (safe to log).

    `failures` are the (redacted remote, reason) of remotes tried before it, so the daemon can
    count `reconciler_fetch_errors_total{remote}` for a primary that is down behind a mirror.
    """

    @property
    def commit(self) -> str: ...
    @property
    def remote(self) -> str: ...
    @property
    def failures(self) -> tuple[tuple[str, str], ...]: ...


class FleetSource(Protocol):
    """The fleet repo as the device reads it: the newest commit, then files at that commit.

    `head` raises FetchError (with `failures`) when no remote answers; `read` returns None for a
    path the commit does not hold and raises RevisionRejected for one over `max_bytes`.
    """

    def head(self) -> RemoteHead: ...
    def ensure(self, commit: str, remote: str) -> None: ...
    def read(self, commit: str, path: str, *, max_bytes: int) -> bytes | None: ...
    def close(self) -> None: ...


# --- the container engine -----------------------------------------------------------------------


class HealthInfo(NamedTuple):
    """What the health step reads from one container's inspect result."""

    status: str  # State.Status: created, running, restarting, paused, exited, dead
    health: str | None  # State.Health.Status (starting, healthy, unhealthy) or None: no HEALTHCHECK
    restart_count: int
    exit_code: int


class HealthEngine(Protocol):
    """The part of the engine the health wait uses."""

    def inspect_health(self, container_id: str) -> HealthInfo: ...

    def exec_run(
        self, container_id: str, cmd: Sequence[str], *, timeout: float = ...
    ) -> int | None:
        """The exit code; None when it was still running at `timeout`."""
        ...


class ApplyEngine(Protocol):
    """The part of the engine the executor uses to apply a plan."""

    def image_present(self, ref: str) -> bool: ...
    def pull(self, ref: str, *, progress: ProgressFn | None = None) -> None: ...
    def create_and_start(
        self, desired: model.DesiredContainer, *, env_file_values: Mapping[str, str] | None
    ) -> str: ...
    def replace(
        self,
        old: model.ObservedContainer,
        desired: model.DesiredContainer,
        *,
        env_file_values: Mapping[str, str] | None,
    ) -> str: ...
    def remove_container(self, observed: model.ObservedContainer) -> None: ...
    def remove_unused_networks(self, apps: Sequence[str]) -> None: ...


class ContainerEngine(ApplyEngine, HealthEngine, Protocol):
    """Everything the device asks of the engine (Docker Engine or Podman's compatible API)."""

    def list_managed(self) -> list[model.ObservedContainer]: ...
    def list_volumes(self) -> list[str]: ...
    def close(self) -> None: ...


# --- trust --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """Who signed: the identity and issuer of the bundle's certificate that matched."""

    identity: str
    issuer: str


class ReleaseVerifier(Protocol):
    """Checks that a trusted identity signed exactly `artifact`; raises VerificationError."""

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> Signer: ...


# --- time ---------------------------------------------------------------------------------------


class Clock(Protocol):
    """Wall time for records and expiry, monotonic time for waits, and sleeping."""

    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
