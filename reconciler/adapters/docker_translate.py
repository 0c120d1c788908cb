"""Pure translation between our values and the Docker Engine API's shapes.

Owns: the names we give containers, networks and volumes; the labels we put on them; the
keyword arguments of the `docker` SDK's low-level `create_container` / `create_host_config` /
`create_endpoint_config` for a `DesiredContainer`; reading a container list entry or an inspect
result back into `ObservedContainer` / `HealthInfo`; the device-side env_file format.

Must not: import `docker` (only `docker_engine` does), talk to an engine, or do any I/O except
`read_env_file`, the tiny reader of the device-side env file, which is bounded.

Env file format (the one `docker run --env-file` reads): one `KEY=VALUE` per line; lines that are
blank or start with `#` (after leading whitespace) are skipped; leading whitespace of the key is
dropped; the value is taken literally up to the end of the line (no quote removal, no `$`
expansion); a later line overrides an earlier one. A bare `KEY` (docker would copy the variable
from the client's environment) is rejected: the reconciler's own environment must not leak into
containers. Errors name the file and the line, never the value (values are secrets).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import errors, model
from reconciler.ports import HealthInfo

DEFAULT_PREFIX = "reconciler"  # names when the namespace is "" (the default)
MAX_ENV_FILE_BYTES = 1024 * 1024
# The labels a container must carry to be ours; anything missing one is invisible.
OUR_LABELS = (
    model.LABEL_APP,
    model.LABEL_CONTAINER,
    model.LABEL_REVISION,
    model.LABEL_NAMESPACE,
    model.LABEL_SPEC_DIGEST,
)
_STATUS_EXIT_CODE = re.compile(r"^Exited \((-?\d+)\)")


@dataclass(frozen=True)
class CreateArgs:
    """Everything `DockerEngine.create` hands to the SDK for one container.

    `container` are `APIClient.create_container` keyword args (without `host_config` and
    `networking_config`), `host_config` those of `create_host_config`; `network` is the app
    network to attach to with `aliases` (None with host networking); `volumes` are the engine
    names of the named volumes to create when missing.
    """

    name: str
    container: dict[str, Any] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)
    network: str | None = None
    aliases: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


def prefix(namespace: str) -> str:
    return namespace or DEFAULT_PREFIX


def container_name(namespace: str, app: str, container: str) -> str:
    """`<ns>_<app>_<container>`: "_" cannot occur in DNS labels, so names never clash."""
    return f"{prefix(namespace)}_{app}_{container}"


def temporary_name(namespace: str, app: str, container: str, spec_digest: str) -> str:
    """Name of a replacement while the old container still holds the final name."""
    return f"{container_name(namespace, app, container)}_{spec_digest[:12]}"


def network_name(namespace: str, app: str) -> str:
    return f"{prefix(namespace)}_{app}"


def volume_name(namespace: str, volume: str) -> str:
    """Named volumes keep the manifest's name on a default device (so people find `gw-data` in
    `docker volume ls`); a namespaced reconciler prefixes them so two fleets sharing one engine
    never share data."""
    return f"{namespace}_{volume}" if namespace else volume


def ownership_labels(namespace: str, app: str) -> dict[str, str]:
    """Labels of the networks and volumes we create."""
    return {model.LABEL_APP: app, model.LABEL_NAMESPACE: namespace}


def container_labels(desired: model.DesiredContainer, *, namespace: str) -> dict[str, str]:
    return {
        model.LABEL_APP: desired.app,
        model.LABEL_CONTAINER: desired.spec.name,
        model.LABEL_REVISION: desired.revision,
        model.LABEL_NAMESPACE: namespace,
        model.LABEL_SPEC_DIGEST: desired.spec_digest,
    }


def environment(spec: model.ContainerSpec, env_file_values: Mapping[str, str] | None) -> list[str]:
    """`KEY=VALUE` list, sorted; the manifest's explicit `env` wins over the env_file."""
    merged = {**(env_file_values or {}), **dict(spec.env)}
    return [f"{key}={value}" for key, value in sorted(merged.items())]


def create_args(
    desired: model.DesiredContainer,
    *,
    namespace: str,
    name: str,
    env_file_values: Mapping[str, str] | None = None,
) -> CreateArgs:
    """The create call for `desired` under `name` (final or temporary)."""
    spec = desired.spec
    host_network = spec.network_mode == "host"
    container: dict[str, Any] = {
        "image": spec.image,
        "name": name,
        "labels": container_labels(desired, namespace=namespace),
        "environment": environment(spec, env_file_values),
        "detach": True,
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
    if spec.entrypoint is not None:
        container["entrypoint"] = list(spec.entrypoint)
    if spec.user is not None:
        container["user"] = spec.user
    if spec.working_dir is not None:
        container["working_dir"] = spec.working_dir

    host: dict[str, Any] = {"restart_policy": {"Name": spec.restart}}
    if spec.restart == "on-failure":
        host["restart_policy"]["MaximumRetryCount"] = 0  # 0 = retry forever, as docker run
    if host_network:
        host["network_mode"] = "host"  # published ports mean nothing there: none are set
    else:
        network = network_name(namespace, desired.app)
        host["network_mode"] = network
        if spec.ports:
            container["ports"] = sorted({(p.container_port, p.protocol) for p in spec.ports})
            bindings: dict[str, list[tuple[str, int]]] = {}
            for p in spec.ports:
                bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                    (p.host_ip, p.host_port)
                )
            host["port_bindings"] = bindings
    binds = []
    volumes = []
    for mount in spec.volumes:
        source = mount.source if mount.is_bind else volume_name(namespace, mount.source)
        if not mount.is_bind:
            volumes.append(source)
        binds.append(f"{source}:{mount.target}:{'ro' if mount.read_only else 'rw'}")
    if binds:
        host["binds"] = binds
    if spec.devices:
        host["devices"] = [
            f"{d.host_path}:{d.container_path}:{d.permissions}" for d in spec.devices
        ]
    if spec.memory is not None:
        host["mem_limit"] = spec.memory
    if spec.cpus is not None:
        host["nano_cpus"] = round(spec.cpus * 1_000_000_000)
    if spec.privileged:
        host["privileged"] = True
    return CreateArgs(
        name=name,
        container=container,
        host_config=host,
        network=None if host_network else network_name(namespace, desired.app),
        aliases=() if host_network else (spec.name,),
        volumes=tuple(dict.fromkeys(volumes)),
    )


def is_ours(labels: Mapping[str, str] | None, *, namespace: str) -> bool:
    """Carries every one of our labels, in our namespace."""
    labels = labels or {}
    return all(key in labels for key in OUR_LABELS) and labels[model.LABEL_NAMESPACE] == namespace


def needs_inspect(summary: Mapping[str, Any]) -> bool:
    """A list entry lacks restart count and exit code; only a not-running container needs them
    for planning, so an unchanged cycle of running containers costs one list call."""
    return summary.get("State") != "running"


def observed(
    summary: Mapping[str, Any], *, namespace: str, inspect: Mapping[str, Any] | None = None
) -> model.ObservedContainer | None:
    """An `ObservedContainer` from a `/containers/json` entry (plus its inspect result when
    fetched), or None when the container is not ours."""
    labels = summary.get("Labels") or {}
    if not is_ours(labels, namespace=namespace):
        return None
    names = summary.get("Names") or []
    status = str(summary.get("State") or "")
    restart_count = 0
    exit_code = _exit_code_from_status(str(summary.get("Status") or ""))
    if inspect is not None:
        state = inspect.get("State") or {}
        status = str(state.get("Status") or status)
        restart_count = int(inspect.get("RestartCount") or 0)
        exit_code = int(state.get("ExitCode") or 0)
    return model.ObservedContainer(
        id=str(summary["Id"]),
        name=names[0].lstrip("/") if names else "",
        app=labels[model.LABEL_APP],
        container=labels[model.LABEL_CONTAINER],
        revision=labels[model.LABEL_REVISION],
        namespace=labels[model.LABEL_NAMESPACE],
        spec_digest=labels[model.LABEL_SPEC_DIGEST],
        image=str(summary.get("Image") or ""),
        status=status,
        restart_count=restart_count,
        exit_code=exit_code,
        labels=tuple(sorted(labels.items())),
    )


def _exit_code_from_status(status: str) -> int:
    match = _STATUS_EXIT_CODE.match(status)
    return int(match.group(1)) if match else 0


def health_info(inspect: Mapping[str, Any]) -> HealthInfo:
    state = inspect.get("State") or {}
    health = state.get("Health") or {}
    return HealthInfo(
        status=str(state.get("Status") or ""),
        health=str(health["Status"]) if health.get("Status") else None,
        restart_count=int(inspect.get("RestartCount") or 0),
        exit_code=int(state.get("ExitCode") or 0),
    )


def ip_addresses(inspect: Mapping[str, Any]) -> list[str]:
    """The container's IPv4 and IPv6 addresses on its networks, from an inspect result."""
    networks = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    found = []
    for network in networks.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            address = (network or {}).get(key)
            if address:
                found.append(address)
    return found


def split_image_ref(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) as the pull API wants them; no tag means `latest`."""
    if "@" in ref:
        repository, _, digest = ref.partition("@")
        return repository, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:  # a ":" after the last "/" is a tag, before it a registry port
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


def parse_env_file(data: bytes, *, file: str) -> dict[str, str]:
    """`KEY=VALUE` lines (see the module docstring); every bad line is reported."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise errors.ProblemsError(
            [errors.Problem(file, "", f"not UTF-8 (byte {e.start})")]
        ) from None
    values: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"line {number}"
        key, sep, value = stripped.partition("=")
        if not sep:
            problems.append(errors.Problem(file, where, 'expected KEY=VALUE, found no "="'))
        elif not key:
            problems.append(errors.Problem(file, where, "expected KEY=VALUE, the key is empty"))
        elif any(c.isspace() for c in key) or "\0" in key:
            problems.append(errors.Problem(file, where, f"key {key!r} contains whitespace or NUL"))
        elif "\0" in value:
            problems.append(errors.Problem(file, where, f"value of {key} contains a NUL byte"))
        else:
            values[key] = value
    if problems:
        raise errors.ProblemsError(problems)
    return values


def read_env_file(path: str) -> dict[str, str]:
    """Read and parse the device-side env file at `path` (at most 1 MiB)."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as e:
        raise errors.ProblemsError(
            [errors.Problem(path, "", f"cannot read the env file: {e.strerror or e}")]
        ) from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise errors.ProblemsError(
            [errors.Problem(path, "", f"env file larger than {MAX_ENV_FILE_BYTES} bytes")]
        )
    return parse_env_file(data, file=path)
