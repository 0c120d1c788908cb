"""Docker Engine adapter: SPEC 3.2 steps 4-5 on a real engine (the sole importer of `docker`).

Owns: talking to the engine through the `docker` SDK's low-level `APIClient` (one HTTP call per
operation, no hidden inspects); finding managed containers by our labels; pulling; creating,
starting, stopping, replacing and removing our containers; the per-app network and our named
volumes. Every `docker.errors.*` / `requests` exception becomes `errors.EngineError` here, with
what was being done.

Must not: touch anything that lacks our labels in our namespace (it is invisible; `stop`,
`remove`, `rename` refuse it), delete a named volume except through `remove_volume`, decide what
to do (the planner does), or read manifests or policy (policy is checked before we are called).

Names: containers `<ns>_<app>_<container>`, the app network `<ns>_<app>` (`<ns>` is the
namespace, or `reconciler` when it is ""); a replacement is created as `<name>_<digest12>` and
renamed once the old one is gone. Named volumes keep the manifest's name (prefixed `<ns>_` in a
namespace) and are labelled when we create them; volumes that already exist are used as they are.
Registry credentials come from the engine client's usual config (`$DOCKER_CONFIG/config.json`,
default `~/.docker/config.json` of the user running the reconciler, including credential
helpers): the SDK reads it and sends `X-Registry-Auth` on pulls.

Outage of a replace: stop + start, about 0.35 s here (Docker 20.10, 2 cores). Docker 20.10 adds
up to 1 s for a container alone on its app network when a request arrives during the start: the
bridge loses carrier, the kernel flushes its ARP entry, and the ARP request sent before the new
interface is up is retried only after 1 s (newer engines announce new interfaces, moby#48808).

Deadlines: every API call has the client's timeout (`timeout`, 60 s; a stop adds its grace
period), except a pull, which streams for as long as the download takes: it has a progress
watchdog instead (`pull_stall_timeout`, default 120 s without a progress event aborts it).
An exec is polled until its own timeout.

Pulls: `pull` pulls what it is asked to; which images need it is device.executor's choice (a
digest already present is not pulled again, a tag is pulled each time so a moved tag is noticed,
with the local copy used when the registry is unreachable). Removing a container also removes
its anonymous volumes (`docker rm -v`), never named ones.

Podman (its Docker-compatible socket, e.g. `unix:///run/podman/podman.sock`), from its docs:
- `unless-stopped` is identical to `always`; restart policies do not act after a stop, and after
  a host reboot containers come back only through `podman-restart.service` (enable it), since
  there is no long-running daemon.
- Image HEALTHCHECKs run from systemd timers: without systemd, `State.Health.Status` stays
  `starting`, so `health: {docker: true}` cannot pass; prefer http/tcp/exec checks there.
- Name resolution on the app network needs netavark + aardvark-dns (DNS is on by default for
  created networks); with the older CNI backend a container sees aliases only on its first network
  (we attach one network, so this holds).
- The container list's `Status` text and event names differ slightly; this adapter reads `State`
  and inspect fields only, which Podman fills as Docker does. Label filters are re-checked here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import requests
import urllib3.exceptions

from reconciler import errors, logs, model, ports
from reconciler.adapters import docker_translate as tr

ProgressFn = Callable[[str], None]
HealthInfo = ports.HealthInfo


_log = logging.getLogger("reconciler.engine")

PORT_RELEASE_WAIT = 10.0  # Podman frees a torn-down container's host ports a moment late
EXEC_TIMEOUT = 10.0  # an exec health check that takes longer has failed this probe
# No progress event from a pull for this long aborts it. Generous: the engine sends progress at
# least every few seconds while bytes arrive, and "Retrying in N seconds" while it retries.
PULL_STALL_TIMEOUT = 120.0


class DockerEngine:
    """One engine, one namespace. The client connects lazily, on the first call."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        namespace: str = "",
        timeout: float = 60.0,
        pull_stall_timeout: float = PULL_STALL_TIMEOUT,
    ) -> None:
        self.namespace = namespace
        self._base_url = base_url
        self._timeout = timeout  # every API call; a stop adds its grace period (docker-py)
        self._pull_stall_timeout = pull_stall_timeout
        self._client: Any = None
        self._network_lock = threading.Lock()  # check-then-create is not atomic in the engine
        self._podman: bool | None = None  # asked of the engine once, when first needed
        self._healthcheck_runs: dict[str, float] = {}  # container id -> last run (monotonic)
        # Only a local engine shares our neighbour table; only root may change it.
        local = base_url is None or base_url.startswith("unix://")
        self.flush_stale_neighbours = local and os.geteuid() == 0 and shutil.which("ip") is not None

    # --- plumbing -------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return self._base_url or "default socket"

    @contextlib.contextmanager
    def _boundary(self, doing: str) -> Iterator[None]:
        """Foreign exceptions become EngineError, naming the engine and the operation."""
        try:
            yield
        except docker.errors.APIError as e:
            reason = e.explanation or str(e)
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            # It answered: even a 500 may be the request's fault (a port already taken).
            raise errors.EngineError(f"docker engine ({self._where}): {doing}: {reason}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            raise errors.EngineError(
                f"docker engine ({self._where}): {doing}: {e}", unavailable=True
            ) from e

    @property
    def _api(self) -> Any:
        if self._client is None:
            socket_path = Path((self._base_url or "").removeprefix("unix://"))
            # Said plainly, and before docker-py, which leaks a socket on this failure.
            if (self._base_url or "").startswith("unix://") and not socket_path.exists():
                raise errors.EngineError(
                    f"docker engine ({self._where}): connect: no socket at {socket_path}; "
                    "is dockerd (or podman.socket) running?",
                    unavailable=True,
                )
            # types-docker types the timeout as int; docker-py passes it on to requests, whose
            # timeouts are float seconds.
            with self._boundary("connect"):
                if self._base_url is None:
                    self._client = docker.from_env(
                        timeout=self._timeout,  # type: ignore[arg-type]  # float seconds
                    ).api
                else:
                    self._client = docker.APIClient(
                        base_url=self._base_url,
                        version="auto",
                        timeout=self._timeout,  # type: ignore[arg-type]  # float seconds
                    )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _inspect_ours(self, container_id: str, doing: str) -> dict[str, Any]:
        with self._boundary(doing):
            attrs = self._api.inspect_container(container_id)
        if not tr.is_ours((attrs.get("Config") or {}).get("Labels"), namespace=self.namespace):
            raise errors.EngineError(
                f"docker engine ({self._where}): {doing}: container {container_id[:12]} is not "
                f'managed by this reconciler (namespace "{self.namespace}"): left untouched'
            )
        return attrs

    # --- observing ------------------------------------------------------------------------

    def list_managed(self) -> list[model.ObservedContainer]:
        """Our containers, running or not: one list call, plus an inspect per container that is
        not running. Restart count and exit code exist only in an inspect result, so a running
        container reports 0 for both here; `inspect_health` reads them for one container."""
        label = f"{model.LABEL_NAMESPACE}={self.namespace}"
        with self._boundary("list managed containers"):
            summaries = self._api.containers(all=True, filters={"label": [label]})
        result = []
        for summary in summaries:
            if not tr.is_ours(summary.get("Labels"), namespace=self.namespace):
                continue
            attrs = None
            if tr.needs_inspect(summary):
                try:
                    with self._boundary(f"inspect container {summary['Id'][:12]}"):
                        attrs = self._api.inspect_container(summary["Id"])
                except errors.EngineError as e:
                    if _is_gone(e.__cause__):
                        continue  # removed between list and inspect
                    raise
            found = tr.observed(summary, namespace=self.namespace, inspect=attrs)
            if found is not None:
                result.append(found)
        return sorted(result, key=lambda c: (c.app, c.container, c.name))

    def inspect_health(self, container_id: str) -> HealthInfo:
        with self._boundary(f"inspect container {container_id[:12]}"):
            attrs = self._api.inspect_container(container_id)
            if self._healthcheck_due(attrs):
                attrs = self._run_healthcheck(attrs)
            return tr.health_info(attrs)

    def _healthcheck_due(self, attrs: Mapping[str, Any]) -> bool:
        """On Podman, whether the image's HEALTHCHECK should run now. Podman runs it from
        systemd timers; without systemd (a container, a minimal device) it never runs and the
        health stays "starting". So the reconciler runs it itself, at the image's interval,
        while it watches the container. Docker runs its own: never due there."""
        state = attrs.get("State") or {}
        healthcheck = (attrs.get("Config") or {}).get("Healthcheck") or {}
        test = healthcheck.get("Test") or []
        if not state.get("Running") or not test or test[0] == "NONE" or not self._is_podman:
            return False
        interval = (healthcheck.get("Interval") or 30_000_000_000) / 1e9  # ns; Docker's default
        last = self._healthcheck_runs.get(str(attrs.get("Id")))
        return last is None or time.monotonic() - last >= interval

    def _run_healthcheck(self, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run a Podman container's HEALTHCHECK once (libpod API); `attrs` with its verdict."""
        container_id = str(attrs.get("Id"))
        self._healthcheck_runs[container_id] = time.monotonic()
        # Podman serves its own API beside the compat one, under a version it has had since 4.0.
        url = f"{self._api.base_url}/v4.0.0/libpod/containers/{container_id}/healthcheck"
        result = self._api._result(self._api._get(url), json=True)
        state = dict(attrs.get("State") or {})
        state["Health"] = {**(state.get("Health") or {}), "Status": result.get("Status")}
        return {**attrs, "State": state}

    @property
    def _is_podman(self) -> bool:
        """Whether the engine is Podman (its version names a "Podman Engine" component)."""
        if self._podman is None:
            components = self._api.version().get("Components") or []
            self._podman = any(c.get("Name") == "Podman Engine" for c in components)
        return self._podman

    def exec_run(
        self, container_id: str, cmd: Sequence[str], *, timeout: float = EXEC_TIMEOUT
    ) -> int | None:
        """Run `cmd` inside the container; its exit code, or None when it is still running after
        `timeout` (a timed-out probe; the engine has no way to kill an exec, so a hung one is
        left to the container). Attached, its output read and dropped until the stream ends.

        Attached, not detached: Podman 4.3 never reports a detached exec as finished (its
        inspect says Running until the container stops), and refuses an attach without a
        stream, so both output streams are attached."""
        doing = f"exec {list(cmd)!r} in container {container_id[:12]}"
        deadline = time.monotonic() + timeout
        with self._boundary(doing):
            exec_id = self._api.exec_create(container_id, list(cmd), stdout=True, stderr=True)["Id"]
            stream = self._api.exec_start(exec_id, socket=True)
            # Over a unix socket docker-py hands out a SocketIO whose close() leaves the
            # socket itself open: close that too.
            sock = getattr(stream, "_sock", None)
            try:
                ended = _drain(stream, deadline)
            finally:
                stream.close()
                if sock is not None:
                    sock.close()
            while ended:
                info = self._api.exec_inspect(exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return int(info["ExitCode"])
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.02)  # the stream may end a moment before the exit is recorded
        return None  # still running at the deadline

    # --- images ---------------------------------------------------------------------------

    def image_present(self, ref: str) -> bool:
        try:
            with self._boundary(f"inspect image {ref}"):
                self._api.inspect_image(ref)
        except errors.EngineError as e:
            if _is_gone(e.__cause__):
                return False
            raise
        return True

    def pull(self, ref: str, *, progress: ProgressFn | None = None) -> None:
        """Pull `ref` (tag or digest), feeding one line per progress event to `progress`.

        Aborted (EngineError naming the image and its registry) when the engine sends no
        progress event for `pull_stall_timeout` seconds: a registry that stalls mid-blob.
        """
        repository, tag = tr.split_image_ref(ref)
        registry, _ = docker.auth.resolve_repository_name(repository)
        doing = f"pull {ref}"
        with self._boundary(doing):
            try:
                with self._pull_stream(repository, tag, registry) as events:
                    for event in events:
                        if event.get("error"):
                            raise errors.EngineError(
                                f"docker engine ({self._where}): {doing}: {event['error']}"
                            )
                        if progress is not None:
                            parts = (event.get("id"), event.get("status"), event.get("progress"))
                            progress(" ".join(str(p) for p in parts if p))
            except (
                urllib3.exceptions.ReadTimeoutError,
                requests.exceptions.ReadTimeout,
                TimeoutError,
            ) as e:
                raise errors.EngineError(
                    f"docker engine ({self._where}): {doing}: no progress from registry "
                    f"{registry} for {self._pull_stall_timeout:g} s: aborted (it stalls, or the "
                    "link to it is down)"
                ) from e
            except urllib3.exceptions.HTTPError as e:  # the stream broke (the engine went away)
                raise errors.EngineError(
                    f"docker engine ({self._where}): {doing} from registry {registry}: {e}"
                ) from e
        if not self.image_present(ref):
            raise errors.EngineError(
                f"docker engine ({self._where}): pull {ref}: finished but the image is not present"
            )

    @contextlib.contextmanager
    def _pull_stream(self, repository: str, tag: str, registry: str) -> Iterator[Iterator[Any]]:
        """The engine's progress events for one pull, as `APIClient.pull(stream=True)` gives
        them, but with a read deadline: docker-py sends a pull with no timeout at all, so a
        registry that stalls mid-blob (the engine then sends nothing) hung the cycle forever.
        Each read of the stream waits at most `pull_stall_timeout`; closing the stream makes
        the engine cancel the pull. Registry credentials as docker-py finds them."""
        api = self._api
        headers = {}
        if header := docker.auth.get_config_header(api, registry):
            headers["X-Registry-Auth"] = header
        response = api._post(  # private, but stable since docker-py 1.x: the same call pull makes
            api._url("/images/create"),
            params={"tag": tag, "fromImage": repository},
            headers=headers,
            stream=True,
            timeout=self._pull_stall_timeout,
        )
        with contextlib.closing(response):
            api._raise_for_status(response)
            yield api._stream_helper(response, decode=True)

    # --- networks and volumes -------------------------------------------------------------

    def ensure_network(self, app: str) -> str:
        """The app's network, created when missing; refuses a same-named network not ours."""
        name = tr.network_name(self.namespace, app)
        with self._network_lock, self._boundary(f"ensure network {name}"):
            found = [n for n in self._api.networks(names=[name]) if n.get("Name") == name]
            if not found:
                try:
                    self._api.create_network(
                        name,
                        driver="bridge",
                        labels=tr.ownership_labels(self.namespace, app),
                        check_duplicate=True,
                    )
                except docker.errors.APIError as e:
                    if not _is_name_conflict(e):  # created meanwhile by someone else
                        raise
                return name
        labels = found[0].get("Labels") or {}
        if labels.get(model.LABEL_NAMESPACE) != self.namespace:
            raise errors.EngineError(
                f"docker engine ({self._where}): ensure network {name}: a network of that name "
                "exists but is not managed by this reconciler"
            )
        return name

    def remove_network_if_unused(self, app: str) -> bool:
        """Remove the app's network when it is ours and nothing is attached; True if removed."""
        name = tr.network_name(self.namespace, app)
        with self._boundary(f"remove network {name}"):
            try:
                attrs = self._api.inspect_network(name)
            except docker.errors.APIError as e:
                if _is_gone(e):
                    return False
                raise
            labels = attrs.get("Labels") or {}
            if labels.get(model.LABEL_NAMESPACE) != self.namespace or attrs.get("Containers"):
                return False
            try:
                self._api.remove_network(attrs["Id"])
            except docker.errors.APIError as e:
                if e.status_code in (403, 404, 409) or _is_gone(e) or _in_use(e):
                    return False  # in use again, or gone: leave it
                raise
        return True

    def _ensure_volume(self, name: str, *, app: str) -> None:
        with self._boundary(f"ensure volume {name}"):
            try:
                self._api.inspect_volume(name)
            except docker.errors.APIError as e:
                if not _is_gone(e):
                    raise
                self._api.create_volume(name, labels=tr.ownership_labels(self.namespace, app))

    def list_volumes(self) -> list[str]:
        """Named volumes we created plus those our containers use (never removed by us)."""
        label = f"{model.LABEL_NAMESPACE}={self.namespace}"
        with self._boundary("list volumes"):
            listed = self._api.volumes(filters={"label": label}).get("Volumes") or []
            summaries = self._api.containers(all=True, filters={"label": [label]})
        names = {
            v["Name"]
            for v in listed
            if (v.get("Labels") or {}).get(model.LABEL_NAMESPACE) == self.namespace
        }
        for summary in summaries:
            if tr.is_ours(summary.get("Labels"), namespace=self.namespace):
                names.update(
                    m["Name"] for m in summary.get("Mounts") or () if m.get("Type") == "volume"
                )
        return sorted(names)

    def remove_volume(self, name: str) -> None:
        """Delete a named volume we created: only ever on an explicit request."""
        with self._boundary(f"remove volume {name}"):
            labels = self._api.inspect_volume(name).get("Labels") or {}
            if labels.get(model.LABEL_NAMESPACE) != self.namespace:
                raise errors.EngineError(
                    f"docker engine ({self._where}): remove volume {name}: not created by this "
                    "reconciler: left untouched"
                )
            self._api.remove_volume(name)

    # --- containers -----------------------------------------------------------------------

    def create(
        self,
        desired: model.DesiredContainer,
        *,
        env_file_values: Mapping[str, str] | None = None,
        temporary_name: bool = False,
    ) -> str:
        """Create (not start) `desired` with everything translated; returns the container id."""
        ns, app, cname = self.namespace, desired.app, desired.spec.name
        name = (
            tr.temporary_name(ns, app, cname, desired.spec_digest)
            if temporary_name
            else tr.container_name(ns, app, cname)
        )
        args = tr.create_args(desired, namespace=ns, name=name, env_file_values=env_file_values)
        if args.network is not None:
            self.ensure_network(app)
        for volume in args.volumes:
            self._ensure_volume(volume, app=app)
        try:
            return self._create(args)
        except errors.EngineError as e:
            cause = e.__cause__
            if not (temporary_name and _is_name_conflict(cause)):
                raise
        # A leftover replacement of ours (a crash between create and rename): start afresh.
        self._inspect_ours(name, f"create container {name}")
        with self._boundary(f"remove leftover container {name}"):
            self._api.remove_container(name, v=True, force=True)
        return self._create(args)

    def _create(self, args: tr.CreateArgs) -> str:
        with self._boundary(f"create container {args.name}"):
            networking = None
            if args.network is not None:
                endpoint = self._api.create_endpoint_config(aliases=list(args.aliases))
                networking = self._api.create_networking_config({args.network: endpoint})
            host_config = self._api.create_host_config(**args.host_config)
            created = self._api.create_container(
                **args.container, host_config=host_config, networking_config=networking
            )
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        """Start; while a host port is still held by a container being torn down, retry.

        Podman frees a stopped or removed container's published ports only when its cleanup
        process has run, a moment after the API call returned: starting the previous container
        again right after its failed replacement was removed then fails with "address already
        in use" (seen with Podman 4.3; Docker frees them before it answers)."""
        deadline = time.monotonic() + PORT_RELEASE_WAIT
        while True:
            try:
                with self._boundary(f"start container {container_id[:12]}"):
                    self._api.start(container_id)
            except errors.EngineError as e:
                if "address already in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                return

    def stop(self, container_id: str, timeout: int = 10) -> None:
        self._inspect_ours(container_id, f"stop container {container_id[:12]}")
        self._stop(container_id, timeout)

    def _stop(self, container_id: str, timeout: int) -> None:
        with self._boundary(f"stop container {container_id[:12]}"):
            self._api.stop(container_id, timeout=timeout)

    def remove(self, container_id: str) -> None:
        """Remove (force: even running) with its anonymous volumes; named volumes stay."""
        self._inspect_ours(container_id, f"remove container {container_id[:12]}")
        self._remove(container_id)

    def _remove(self, container_id: str) -> None:
        with self._boundary(f"remove container {container_id[:12]}"):
            self._api.remove_container(container_id, v=True, force=True)

    def rename(self, container_id: str, name: str) -> None:
        self._inspect_ours(container_id, f"rename container {container_id[:12]}")
        with self._boundary(f"rename container {container_id[:12]} to {name}"):
            self._api.rename(container_id, name)

    def replace(
        self,
        old: model.ObservedContainer,
        desired: model.DesiredContainer,
        *,
        env_file_values: Mapping[str, str] | None = None,
        stop_timeout: int = 10,
    ) -> str:
        """Swap `old` for `desired` with the shortest outage: create the new container under a
        temporary name first, then stop old and start new back to back, then remove old and
        rename new. If the new one fails to start, it is removed and old is started again."""
        final = tr.container_name(self.namespace, desired.app, desired.spec.name)
        if old.name != final:
            # `old` is a replacement left by a crash before its rename: the temporary name is
            # the one a new replacement would take. Nothing better to keep: start afresh.
            self.remove_container(old, stop_timeout=stop_timeout)
            return self.create_and_start(desired, env_file_values=env_file_values)
        attrs = self._inspect_ours(old.id, f"replace container {old.name}")
        was_running = bool((attrs.get("State") or {}).get("Running"))
        new_id = self.create(desired, env_file_values=env_file_values, temporary_name=True)
        self._stop(old.id, stop_timeout)
        try:
            self.start(new_id)
        except errors.EngineError:
            with contextlib.suppress(errors.EngineError):
                self._remove(new_id)
            if was_running:
                with contextlib.suppress(errors.EngineError):
                    self.start(old.id)
            raise
        self._forget_reused_address(attrs, new_id)
        self._remove(old.id)
        try:
            with self._boundary(f"rename container {new_id[:12]} to {final}"):
                self._api.rename(new_id, final)
        except errors.EngineError as exc:
            # Docker 20.10 refuses to rename a container that is restarting ("sandbox not
            # found"). The swap itself is done: the container runs under its temporary name
            # and the next replace starts afresh from it; the health step judges it now.
            logs.event(
                _log,
                logging.WARNING,
                "apply.rename_failed",
                container=new_id[:12],
                name=final,
                kept="the temporary name",
                reason=str(exc),
            )
        return new_id

    def _forget_reused_address(self, old_attrs: Mapping[str, Any], new_id: str) -> None:
        """The new container usually gets the old one's IP on the app network. Engines before
        Docker 27 send no gratuitous ARP then, so the host keeps the old MAC for that IP and
        connections stall for ~0.8 s until the entry is re-probed (measured in bench/). Drop
        that one neighbour entry. Best effort: needs root in the host's network namespace and
        iproute2; elsewhere (rootless, inside a container) the stall simply stays."""
        if not self.flush_stale_neighbours:
            return
        old_ips = tr.ip_addresses(old_attrs)
        try:
            with self._boundary(f"inspect container {new_id[:12]}"):
                new_ips = tr.ip_addresses(self._api.inspect_container(new_id))
        except errors.EngineError:
            return
        for ip in sorted(set(old_ips) & set(new_ips)):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["ip", "neigh", "flush", "to", ip],
                    check=False,
                    capture_output=True,
                    timeout=5,
                )

    # --- what the executor calls (ports.ApplyEngine) ----------------------------------------

    def create_and_start(
        self,
        desired: model.DesiredContainer,
        *,
        env_file_values: Mapping[str, str] | None = None,
    ) -> str:
        """A new container under its final name, started; removed again if it cannot start."""
        new_id = self.create(desired, env_file_values=env_file_values)
        try:
            self.start(new_id)
        except errors.EngineError:
            with contextlib.suppress(errors.EngineError):
                self._remove(new_id)
            raise
        return new_id

    def remove_container(
        self, observed: model.ObservedContainer, *, stop_timeout: int = 10
    ) -> None:
        """Stop gracefully, then remove (named volumes stay)."""
        self._inspect_ours(observed.id, f"remove container {observed.name}")
        self._stop(observed.id, stop_timeout)
        self._remove(observed.id)

    def remove_unused_networks(self, apps: Sequence[str]) -> None:
        for app in apps:
            self.remove_network_if_unused(app)


# Podman 4's compat API answers several errors with 500 and a message where Docker sends a
# status of its own: these read both.


def _explains(error: BaseException | None, *phrases: str) -> bool:
    if not isinstance(error, docker.errors.APIError):
        return False
    text = str(error.explanation or "").lower()
    return any(phrase in text for phrase in phrases)


def _is_gone(error: BaseException | None) -> bool:
    """The object does not exist: Docker answers 404, Podman 4 also 500 "no such container"."""
    return isinstance(error, docker.errors.NotFound) or _explains(
        error, "no such container", "no such image", "no such volume", "no such network"
    )


def _is_name_conflict(error: BaseException | None) -> bool:
    """The name is taken: Docker answers 409, Podman 4 500 "that name is already in use"."""
    return (isinstance(error, docker.errors.APIError) and error.status_code == 409) or _explains(
        error, "already in use", "already exists"
    )


def _in_use(error: BaseException | None) -> bool:
    return _explains(error, "is being used", "has associated containers", "in use")


def _drain(stream: Any, deadline: float) -> bool:
    """Read and drop what `stream` (an attached exec's socket) sends until it ends: True, or
    until `deadline` (monotonic) passes: False. Never blocks past the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([stream], [], [], left)
        if readable and not stream.read(65536):
            return True
