"""Field parsers of one `spec.containers[]` entry of an app manifest (SPEC 2.1).

Owns how each container field (image, command, env, ports, volumes, devices, memory, cpus, health,
...) is read and what its messages say; `manifests` owns the document around them and the rules
that span fields or containers (see its docstring for the decisions beyond SPEC 2.1). Pure: values
in, model values and problems out; must not read files or decide device policy.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from decimal import Decimal
from typing import Any, get_args

from reconciler import model
from reconciler.core import _checks

_HEALTH_KINDS: tuple[str, ...] = get_args(model.HealthKind)
_HEALTH_TIMING = ("interval", "start_period", "failure_threshold")
# Probe timing bounds (SPEC 2.1 health): field -> (low, high, the range as users read it). More
# than 10 probes a second is load on a small device, not a faster verdict; past the upper bounds
# `health.timeout` decides long before anyway, and every accepted value is one `time.sleep` takes.
_HEALTH_DURATIONS = {
    "interval": (0.1, 3600.0, "from 100ms to 1h"),
    "start_period": (0.0, 86400.0, "from 0s to 24h"),
}
_MAX_FAILURE_THRESHOLD = 1000
# distribution/reference grammar, with digests restricted to sha256.
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_PORT = re.compile(r"(?:([0-9.]+):)?([0-9]+):([0-9]+)(?:/(tcp|udp))?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+")
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([kmgt]?)(?:i?b)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MIN_MEMORY = 6 * 1024**2
_MIN_CPUS = 0.01
# The engine takes memory in bytes and CPUs in nano-CPUs, both as signed 64-bit integers.
_MAX_MEMORY = 2**63 - 1
_MAX_CPUS = (2**63 - 1) // 10**9
# distribution/reference: a repository name of at most 255 characters, a tag of at most 128,
# plus "@sha256:" and 64 hex digits; longer text is refused before the regex sees it.
_MAX_IMAGE = 255 + 1 + 128 + 71
# Linux limits: one argv or environment string (MAX_ARG_STRLEN, with its NUL), one path.
_MAX_ARG_BYTES = 128 * 1024 - 1
_MAX_PATH_BYTES = 4095
_BASE60 = "; quote it: YAML reads unquoted digits:digits as one base-60 number"


def _image(r: _checks.Report, where: str, value: object) -> str:
    if isinstance(value, str) and len(value) > _MAX_IMAGE:
        r.add(where, f"image reference of {len(value)} characters, over the limit of {_MAX_IMAGE}")
    elif not isinstance(value, str) or not _IMAGE.fullmatch(value):
        shape = '"[registry/]repository[:tag][@sha256:<64 hex>]" (repository in lower case)'
        r.expected(where, f"an image reference {shape}", value)
    return str(value)


def _argv(r: _checks.Report, where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        example = json.dumps(value.split()).replace('"', "")
        r.expected(where, "a list of strings", value, hint=f"; write it as a list, e.g. {example}")
        return ()
    items = r.entries(
        where, value, empty="expected a non-empty list; omit it for the image's default"
    )
    for at, item in items:
        if not isinstance(item, str):
            r.expected(at, "a string", item, hint="; quote it" if item is not None else "")
        elif _checks.no_nul(r, at, item):
            _check_arg_length(r, at, item)
    return tuple(str(item) for _, item in items)


def _env(r: _checks.Report, where: str, value: object) -> tuple[tuple[str, str], ...]:
    env: list[tuple[str, str]] = []
    for key, val, at in r.items(where, value):
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            r.expected(at, "a variable name [A-Za-z_][A-Za-z0-9_]*", key)
        elif isinstance(val, str | int | float):  # bool is an int: YAML true becomes "true"
            shown = str(val).lower() if isinstance(val, bool) else str(val)
            if _checks.no_nul(r, at, shown) and _check_arg_length(r, at, f"{key}={shown}"):
                env.append((key, shown))
        else:
            r.expected(at, "a string, number or boolean", val)
    return tuple(sorted(env))


def _port(r: _checks.Report, where: str, value: object) -> model.PortMapping | None:
    match = _PORT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        r.expected(
            where, '"[ip:]host:container[/tcp|udp]"', value, hint=_BASE60 * (type(value) is int)
        )
        return None
    ip, host, container, protocol = match.groups()
    before = len(r.problems)
    if ip is not None and not _is_ipv4(ip):
        r.add(where, f'host IP "{ip}" is not an IPv4 address')
    for number in (int(host), int(container)):
        if not 1 <= number <= 65535:
            r.add(where, f"port {number} is out of range 1..65535")
    if len(r.problems) > before:
        return None
    return model.PortMapping(
        int(host), int(container), protocol="udp" if protocol == "udp" else "tcp", host_ip=ip or ""
    )


def _volume(r: _checks.Report, where: str, value: object) -> model.VolumeMount | None:
    text = value if isinstance(value, str) else ""
    parts = text.split(":") if isinstance(value, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        r.expected(where, '"source:/target[:ro|:rw]"', value)
        return None
    source, target, *mode = parts
    before = len(r.problems)
    if not _checks.no_nul(r, where, text):
        return None
    if source.startswith("/"):
        _check_path(r, where, source, what="host path")
    elif not _VOLUME_NAME.fullmatch(source):
        name = "[A-Za-z0-9][A-Za-z0-9_.-]+"
        r.add(where, f'"{source}" is neither an absolute host path nor a volume name {name}')
    _check_path(r, where, target, what="target")
    if target == "/":
        r.add(where, 'target "/" would hide the container\'s root')
    if mode and mode[0] not in ("ro", "rw"):
        r.add(where, f'mode "{mode[0]}" is not one of ro, rw')
    if len(r.problems) > before:
        return None
    return model.VolumeMount(source=source, target=target, read_only=mode == ["ro"])


def _volumes(r: _checks.Report, where: str, value: object) -> tuple[model.VolumeMount, ...]:
    mounts: tuple[model.VolumeMount, ...] = _checks.each(_volume)(r, where, value)
    seen: set[str] = set()  # linear: a manifest may list tens of thousands of mounts
    for i, mount in enumerate(mounts):
        if mount.target in seen:
            r.add(f"{where}[{i}]", f'duplicate mount target "{mount.target}"')
        seen.add(mount.target)
    return mounts


def _device(r: _checks.Report, where: str, value: object) -> model.DeviceMapping | None:
    text = value if isinstance(value, str) else ""
    parts = text.split(":") if isinstance(value, str) else []
    if not 1 <= len(parts) <= 3:
        r.expected(where, '"/dev/host[:/dev/container[:rwm]]"', value)
        return None
    if len(parts) == 2 and not parts[1].startswith("/"):  # docker's `/dev/x:rw` short form
        parts = [parts[0], *parts]
    host = parts[0]
    container = parts[1] if len(parts) > 1 else host
    permissions = parts[2] if len(parts) > 2 else "rwm"
    before = len(r.problems)
    if not _checks.no_nul(r, where, text):
        return None
    if not host.startswith("/dev/"):
        r.add(where, f'host device "{host}" is not under /dev/')
    _check_path(r, where, container, what="container path")
    if not permissions or set(permissions) - set("rwm") or len(set(permissions)) < len(permissions):
        r.add(where, f'permissions "{permissions}" are not a subset of rwm')
    _check_path(r, where, host, what="host device")
    if len(r.problems) > before:
        return None
    return model.DeviceMapping(host_path=host, container_path=container, permissions=permissions)


def _memory(r: _checks.Report, where: str, value: object) -> int | None:
    if type(value) is int:
        amount = value
    elif (
        isinstance(value, str) and len(value) <= 64 and (match := _MEMORY.fullmatch(value.strip()))
    ):
        # Decimal, not float: exact for any length of digits, and it never overflows.
        amount = int(Decimal(match[1]) * _MEMORY_UNITS[match[2].lower()])
    else:
        r.expected(where, "bytes or a size like 512k, 128m, 1g", value)
        return None
    if amount < _MIN_MEMORY:
        r.add(where, f"{amount} bytes is below Docker's minimum of 6m ({_MIN_MEMORY} bytes)")
        return None
    if amount > _MAX_MEMORY:
        shown = _checks.show_json(value)
        r.add(where, f"{shown} is over the engine's limit of {_MAX_MEMORY} bytes")
        return None
    return amount


def _cpus(r: _checks.Report, where: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        r.expected(where, "a number of CPUs like 0.5", value)
        return None
    # Compared before float(), which overflows; the engine takes nano-CPUs as a 64-bit integer.
    shown = _checks.show_json(value).split()[-1]
    if value < _MIN_CPUS:
        r.add(where, f"{shown} is below the minimum of {_MIN_CPUS}")
        return None
    if value > _MAX_CPUS:
        r.add(where, f"{shown} is over the engine's maximum of {_MAX_CPUS}")
        return None
    return float(value)


def _health(r: _checks.Report, where: str, value: object) -> model.HealthCheck | None:
    body = r.fields(where, value, allowed=(*_HEALTH_KINDS, *_HEALTH_TIMING))
    if body is None:
        return None
    kinds = [key for key in body if key in _HEALTH_KINDS]
    if len(kinds) != 1:
        got = ", ".join(kinds) or "none"
        r.add(where, f"expected exactly one of {', '.join(_HEALTH_KINDS)}, got {got}")
        return None
    timing = _health_timing(r, where, body)
    kind, spec = kinds[0], body[kinds[0]]
    at = f"{where}.{kind}"
    if kind == "exec":
        return model.HealthCheck(kind="exec", command=_argv(r, at, spec), **timing)
    if kind == "docker":
        if spec is not True:
            r.expected(at, "true (omit health for no check)", spec)
        return model.HealthCheck(kind="docker", **timing)
    probe = r.fields(at, spec, allowed=("port", "path")[: 2 if kind == "http" else 1])
    if probe is None:
        return None
    if "port" not in probe:
        r.add(f"{at}.port", "required field is missing")
    port = _checks.int_in(r, f"{at}.port", probe.get("port"), low=1, high=65535)
    path = probe.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        r.expected(f"{at}.path", 'a URL path starting with "/"', path)
    return model.HealthCheck(
        kind="http" if kind == "http" else "tcp", port=port, path=str(path), **timing
    )


def _health_timing(r: _checks.Report, where: str, body: dict[object, object]) -> dict[str, Any]:
    """The valid `interval`, `start_period` and `failure_threshold` of a health mapping (the
    model's defaults stand for the absent and the invalid ones, which are reported)."""
    timing: dict[str, Any] = {}
    for key, (low, high, shown) in _HEALTH_DURATIONS.items():
        if key in body:
            seconds = _checks.duration(r, f"{where}.{key}", body[key])
            if seconds is not None and not low <= seconds <= high:
                r.add(f"{where}.{key}", f"must be {shown}, got {_checks.show_json(body[key])}")
            elif seconds is not None:
                timing[key] = seconds
    if "failure_threshold" in body:
        at, value = f"{where}.failure_threshold", body["failure_threshold"]
        threshold = _checks.int_in(r, at, value, low=1, high=_MAX_FAILURE_THRESHOLD)
        if threshold is not None:
            timing["failure_threshold"] = threshold
    return timing


def _string(r: _checks.Report, where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        r.expected(where, "a non-empty string", value, hint="; quote it" * (type(value) is int))
    else:
        _checks.no_nul(r, where, value)
    return str(value)


def _path(r: _checks.Report, where: str, value: object) -> str:
    if (text := _string(r, where, value)) and isinstance(value, str):
        _check_path(r, where, text, what="path")
    return text


def _check_arg_length(r: _checks.Report, where: str, text: str) -> bool:
    """True when the kernel takes `text` as one argument or environment entry."""
    if (size := len(text.encode("utf-8", "surrogatepass"))) > _MAX_ARG_BYTES:
        r.add(where, f"is {size} bytes, over the kernel's limit of {_MAX_ARG_BYTES} per argument")
        return False
    return True


def _check_path(r: _checks.Report, where: str, path: str, *, what: str) -> None:
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        r.add(where, f"{what} is longer than the kernel's limit of {_MAX_PATH_BYTES} bytes")
    elif not path.startswith("/"):
        r.add(where, f'{what} "{path}" is not absolute')
    elif ".." in path.split("/"):
        r.add(where, f'{what} "{path}" contains ".."')


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# Field name -> check returning the model-ready value; the order is the one users read.
CONTAINER: dict[str, _checks.Check] = {
    "name": _checks.dns_label,
    "image": _image,
    "command": _argv,
    "entrypoint": _argv,
    "working_dir": _path,
    "user": _string,
    "env": _env,
    "env_file": _path,
    "ports": _checks.each(_port),
    "volumes": _volumes,
    "devices": _checks.each(_device),
    "restart": _checks.choice("no", "always", "on-failure", "unless-stopped"),
    "memory": _memory,
    "cpus": _cpus,
    "privileged": _checks.flag,
    "network_mode": _checks.choice("bridge", "host"),
    "health": _health,
}
