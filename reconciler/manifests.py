"""App manifests (`apps/**/*.yaml`, SPEC 2.1): bytes in, a validated `model.AppManifest` out.

Owns the manifest schema and its error messages; `selection`, `planner` and `policy` consume the
values. Pure: no file, network or Docker access (the git adapter reads the bytes, `policy` decides
what a device allows). Every problem of a file is reported in one `errors.ManifestError`.

Decisions beyond SPEC 2.1, each turning a fleet-wide failure at apply time into a clear error here:
- `metadata` holds only `name`: the model has no place for labels/annotations, and adding fields
  later is compatible while removing them is not.
- `selector: null` is rejected (omit it, or write `{}`): a forgotten body must not select the fleet.
- `rollout.waves`: the last wave must reach 100 percent, else the rollout never completes (to hold
  one, give the last wave a later `after`); percents never decrease, `after`s strictly increase.
- An unquoted port mapping like `22:22` is a YAML base-60 integer: rejected with a hint to quote.
- `ports` with `network_mode: host` are rejected (Docker ignores them); an http/tcp health port
  must be a tcp host port the container publishes, unless it uses the host network.
- Paths may not contain `..` (policy compares host paths by prefix); mount targets are unique per
  container and never `/`; `memory` is at least 6 MiB and `cpus` at least 0.01 (Docker's minimums).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import durations, errors, labels, model, safe_yaml

API_VERSION = "reconciler/v1"
KIND = "App"
_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_HEALTH_KINDS = ("http", "tcp", "exec", "docker")
_WILDCARD_IPS = frozenset({"", "0.0.0.0"})  # noqa: S104 - compared, never bound

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
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_./-]+")
_BASE60 = "; quote it: YAML reads unquoted digits:digits as one base-60 number"


@dataclass
class _Report:
    """Problems of one file, collected while walking it (mutable on purpose, never returned)."""

    file: str
    problems: list[errors.Problem] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(errors.Problem(file=self.file, field=where, message=message))

    def expected(self, where: str, what: str, value: object, hint: str = "") -> None:
        self.add(where, f"expected {what}, got {_show(value)}{hint}")


def parse(data: bytes, *, path: str) -> model.AppManifest:
    """Validate one manifest; `revision` is the sha256 hex of `data`. Raises ManifestError."""
    try:
        doc = safe_yaml.load(data, file=path)
    except errors.ProblemsError as exc:
        raise errors.ManifestError(exc.problems) from None
    report = _Report(path)
    manifest = _app(report, doc, path=path, revision=hashlib.sha256(data).hexdigest())
    if report.problems or manifest is None:
        raise errors.ManifestError(report.problems)
    return manifest


def parse_many(files: Mapping[str, bytes]) -> tuple[list[model.AppManifest], list[errors.Problem]]:
    """Parse every file in path order; return the valid manifests and the problems of all files.

    A file declaring an app name already taken by an earlier path is a problem and left out.
    """
    manifests: list[model.AppManifest] = []
    problems: list[errors.Problem] = []
    owner: dict[str, str] = {}
    for path in sorted(files):
        try:
            manifest = parse(files[path], path=path)
        except errors.ManifestError as exc:
            problems.extend(exc.problems)
            continue
        if manifest.name in owner:
            message = f'duplicate app name "{manifest.name}" (also in {owner[manifest.name]})'
            problems.append(errors.Problem(file=path, field="metadata.name", message=message))
            continue
        owner[manifest.name] = path
        manifests.append(manifest)
    return manifests, problems


def is_manifest_path(path: str) -> bool:
    """True for `apps/**/*.yaml` and `apps/**/*.yml` (repo-relative, `/`-separated)."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != "apps" or any(p in ("", ".", "..") for p in parts):
        return False
    return parts[-1].endswith((".yaml", ".yml"))


def _app(r: _Report, doc: object, *, path: str, revision: str) -> model.AppManifest | None:
    if doc is None:
        r.add("", f"file is empty; expected an App manifest (apiVersion: {API_VERSION})")
        return None
    top = _fields(r, "", doc, allowed=_TOP_FIELDS, required=_TOP_FIELDS)
    if top is None:
        return None
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key in top and top[key] != want:
            r.expected(key, f'"{want}"', top[key])
    meta = _fields(r, "metadata", top.get("metadata", {}), allowed=("name",))
    name = _dns_label(r, "metadata.name", meta["name"]) if meta and "name" in meta else ""
    if "metadata" in top and meta is not None and "name" not in meta:
        r.add("metadata.name", "required field is missing")
    spec_fields = ("selector", "containers", "rollout")
    if "spec" not in top:
        return None
    spec = _fields(r, "spec", top["spec"], allowed=spec_fields, required=("containers",))
    if spec is None:
        return None
    selector = _selector(r, "spec.selector", spec.get("selector", {}))
    waves = _rollout(r, "spec.rollout", spec["rollout"]) if "rollout" in spec else ()
    containers = _containers(r, "spec.containers", spec.get("containers", []))
    if r.problems or selector is None:
        return None
    return model.AppManifest(
        name=name,
        path=path,
        revision=revision,
        selector=selector,
        containers=containers,
        waves=waves,
    )


def _selector(r: _Report, where: str, value: object) -> model.Selector | None:
    if value is None:
        r.add(where, "expected a mapping, got null; omit it or write {} to select every device")
        return None
    body = _fields(r, where, value, allowed=("matchLabels", "matchExpressions"))
    if body is None:
        return None
    pairs: list[tuple[str, str]] = []
    for key, val, at in _items(r, f"{where}.matchLabels", body.get("matchLabels", {})):
        if problem := labels.label_key_error(key) or labels.label_value_error(val):
            r.add(at, problem)
        else:
            pairs.append((str(key), str(val)))
    exprs = _list(r, f"{where}.matchExpressions", body.get("matchExpressions", []))
    requirements = [req for at, item in exprs if (req := _requirement(r, at, item))]
    return model.Selector(match_labels=tuple(sorted(pairs)), match_expressions=tuple(requirements))


def _requirement(r: _Report, where: str, value: object) -> model.Requirement | None:
    required = ("key", "operator")
    body = _fields(r, where, value, allowed=(*required, "values"), required=required)
    if body is None or "key" not in body or "operator" not in body:
        return None
    before = len(r.problems)
    key, operator, values = body["key"], body["operator"], body.get("values")
    if problem := labels.label_key_error(key):
        r.add(f"{where}.key", problem)
    if operator not in _OPERATORS:
        r.expected(f"{where}.operator", f"one of {', '.join(_OPERATORS)}", operator)
    if operator in ("In", "NotIn") and not values:
        r.add(f"{where}.values", f"operator {operator} needs a non-empty list of values")
    elif operator in ("Exists", "DoesNotExist") and "values" in body:
        r.add(f"{where}.values", f"operator {operator} takes no values; remove the field")
    elif values is not None:
        for at, item in _list(r, f"{where}.values", values):
            if problem := labels.label_value_error(item):
                r.add(at, problem)
    if len(r.problems) > before:
        return None
    return model.Requirement(key=key, operator=operator, values=tuple(values or ()))


def _rollout(r: _Report, where: str, value: object) -> tuple[model.Wave, ...]:
    body = _fields(r, where, value, allowed=("waves",), required=("waves",))
    if body is None or "waves" not in body:
        return ()
    empty = "expected at least one wave; omit rollout to update every device at once"
    items = _list(r, f"{where}.waves", body["waves"], empty=empty)
    waves: list[tuple[str, model.Wave]] = []
    for at, item in items:
        wave = _fields(r, at, item, allowed=("percent", "after"), required=("percent",))
        if wave is None or "percent" not in wave:
            continue
        percent = _int_in(r, f"{at}.percent", wave["percent"], low=1, high=100)
        try:
            after = durations.parse_duration(wave["after"]) if "after" in wave else 0.0
        except ValueError as exc:
            r.add(f"{at}.after", str(exc))
            continue
        if percent is not None:
            waves.append((at, model.Wave(percent=percent, after=after)))
    for (_, prev), (at, wave) in itertools.pairwise(waves):
        if wave.percent < prev.percent:
            r.add(f"{at}.percent", f"{wave.percent} is below the previous wave's {prev.percent}")
        if wave.after <= prev.after:
            was, now = durations.format_duration(prev.after), durations.format_duration(wave.after)
            r.add(f"{at}.after", f"{now} is not later than the previous wave's {was}")
    if waves and len(waves) == len(items) and waves[-1][1].percent != 100:
        r.add(
            f"{waves[-1][0]}.percent",
            "the last wave must reach 100 or the rollout never completes; "
            "to hold a rollout, give the last wave a later after",
        )
    return tuple(wave for _, wave in waves)


def _containers(r: _Report, where: str, value: object) -> tuple[model.ContainerSpec, ...]:
    specs: list[model.ContainerSpec] = []
    names: dict[str, str] = {}
    published: list[tuple[str, model.PortMapping]] = []
    for at, item in _list(r, where, value, empty="expected at least one container"):
        if isinstance(item, dict) and isinstance(name := item.get("name"), str):
            if name in names:
                r.add(f"{at}.name", f'duplicate container name "{name}" (also {names[name]})')
            names.setdefault(name, at)
        if spec := _container(r, at, item):
            specs.append(spec)
            published.extend((f"{at}.ports[{i}]", port) for i, port in enumerate(spec.ports))
    for i, (at, port) in enumerate(published):
        for other_at, other in published[:i]:
            same_ip = port.host_ip == other.host_ip or {port.host_ip, other.host_ip} & _WILDCARD_IPS
            if (port.host_port, port.protocol) == (other.host_port, other.protocol) and same_ip:
                r.add(at, f"duplicate host port {port.host_port}/{port.protocol} (also {other_at})")
                break
    return tuple(specs)


def _container(r: _Report, where: str, value: object) -> model.ContainerSpec | None:
    body = _fields(r, where, value, allowed=tuple(_CONTAINER), required=("name", "image"))
    if body is None:
        return None
    before = len(r.problems)
    # Each check returns the model-ready value; absent fields keep ContainerSpec's defaults.
    values = {
        key: check(r, f"{where}.{key}", body[key])
        for key, check in _CONTAINER.items()
        if key in body
    }
    spec = model.ContainerSpec(**{"name": "", "image": "", **values})
    if spec.network_mode == "host" and spec.ports:
        r.add(f"{where}.ports", "not allowed with network_mode: host (Docker ignores them)")
    health_port = spec.health.port if spec.health else None
    tcp_ports = {p.host_port for p in spec.ports if p.protocol == "tcp"}
    if health_port is not None and spec.network_mode != "host" and health_port not in tcp_ports:
        r.add(
            f"{where}.health", f"port {health_port} is not a tcp host port this container publishes"
        )
    return spec if len(r.problems) == before else None


def _image(r: _Report, where: str, value: object) -> str:
    if not isinstance(value, str) or not _IMAGE.fullmatch(value):
        shape = '"[registry/]repository[:tag][@sha256:<64 hex>]" (repository in lower case)'
        r.expected(where, f"an image reference {shape}", value)
    return str(value)


def _argv(r: _Report, where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        example = json.dumps(value.split()).replace('"', "")
        r.expected(where, "a list of strings", value, f"; write it as a list, e.g. {example}")
        return ()
    items = _list(
        r, where, value, empty="expected a non-empty list; omit it for the image's default"
    )
    for at, item in items:
        if not isinstance(item, str):
            r.expected(at, "a string", item, "; quote it" if item is not None else "")
    return tuple(str(item) for _, item in items)


def _env(r: _Report, where: str, value: object) -> tuple[tuple[str, str], ...]:
    env: list[tuple[str, str]] = []
    for key, val, at in _items(r, where, value):
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            r.expected(at, "a variable name [A-Za-z_][A-Za-z0-9_]*", key)
        elif isinstance(val, str | int | float):  # bool is an int: YAML true becomes "true"
            env.append((key, str(val).lower() if isinstance(val, bool) else str(val)))
        else:
            r.expected(at, "a string, number or boolean", val)
    return tuple(sorted(env))


def _port(r: _Report, where: str, value: object) -> model.PortMapping | None:
    match = _PORT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        r.expected(where, '"[ip:]host:container[/tcp|udp]"', value, _BASE60 * (type(value) is int))
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
    proto = "udp" if protocol == "udp" else "tcp"
    return model.PortMapping(int(host), int(container), protocol=proto, host_ip=ip or "")


def _volume(r: _Report, where: str, value: object) -> model.VolumeMount | None:
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        r.expected(where, '"source:/target[:ro|:rw]"', value)
        return None
    source, target, *mode = parts
    before = len(r.problems)
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


def _volumes(r: _Report, where: str, value: object) -> tuple[model.VolumeMount, ...]:
    mounts = _each(_volume)(r, where, value)
    for i, mount in enumerate(mounts):
        if any(other.target == mount.target for other in mounts[:i]):
            r.add(f"{where}[{i}]", f'duplicate mount target "{mount.target}"')
    return mounts


def _device(r: _Report, where: str, value: object) -> model.DeviceMapping | None:
    parts = value.split(":") if isinstance(value, str) else []
    if not 1 <= len(parts) <= 3:
        r.expected(where, '"/dev/host[:/dev/container[:rwm]]"', value)
        return None
    if len(parts) == 2 and not parts[1].startswith("/"):  # docker's `/dev/x:rw` short form
        parts = [parts[0], *parts]
    host = parts[0]
    container = parts[1] if len(parts) > 1 else host
    permissions = parts[2] if len(parts) > 2 else "rwm"
    before = len(r.problems)
    if not host.startswith("/dev/"):
        r.add(where, f'host device "{host}" is not under /dev/')
    _check_path(r, where, container, what="container path")
    if not permissions or set(permissions) - set("rwm") or len(set(permissions)) < len(permissions):
        r.add(where, f'permissions "{permissions}" are not a subset of rwm')
    _check_path(r, where, host, what="host device")
    if len(r.problems) > before:
        return None
    return model.DeviceMapping(host_path=host, container_path=container, permissions=permissions)


def _memory(r: _Report, where: str, value: object) -> int | None:
    if type(value) is int:
        amount = value
    elif isinstance(value, str) and (match := _MEMORY.fullmatch(value.strip())):
        amount = int(float(match[1]) * _MEMORY_UNITS[match[2].lower()])
    else:
        r.expected(where, "bytes or a size like 512k, 128m, 1g", value)
        return None
    if amount < _MIN_MEMORY:
        r.add(where, f"{amount} bytes is below Docker's minimum of 6m ({_MIN_MEMORY} bytes)")
    return amount


def _cpus(r: _Report, where: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        r.expected(where, "a number of CPUs like 0.5", value)
        return None
    if value < _MIN_CPUS:
        r.add(where, f"{value} is below the minimum of {_MIN_CPUS}")
    return float(value)


def _health(r: _Report, where: str, value: object) -> model.HealthCheck | None:
    body = _fields(r, where, value, allowed=_HEALTH_KINDS)
    if body is None:
        return None
    if len(body) != 1:
        got = ", ".join(map(str, body)) or "none"
        r.add(where, f"expected exactly one of {', '.join(_HEALTH_KINDS)}, got {got}")
        return None
    ((kind, spec),) = body.items()
    at = f"{where}.{kind}"
    if kind == "exec":
        return model.HealthCheck(kind="exec", command=_argv(r, at, spec))
    if kind == "docker":
        if spec is not True:
            r.expected(at, "true (omit health for no check)", spec)
        return model.HealthCheck(kind="docker")
    probe = _fields(r, at, spec, allowed=("port", "path")[: 2 if kind == "http" else 1])
    if probe is None:
        return None
    if "port" not in probe:
        r.add(f"{at}.port", "required field is missing")
    port = _int_in(r, f"{at}.port", probe.get("port"), low=1, high=65535)
    path = probe.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        r.expected(f"{at}.path", 'a URL path starting with "/"', path)
    return model.HealthCheck(kind="http" if kind == "http" else "tcp", port=port, path=str(path))


# --- generic checks -------------------------------------------------------------------------


def _fields(
    r: _Report,
    where: str,
    value: object,
    *,
    allowed: tuple[str, ...],
    required: tuple[str, ...] = (),
) -> dict[Any, Any] | None:
    """The mapping at `where`, after reporting unknown and missing fields; None if no mapping."""
    if not isinstance(value, dict):
        r.expected(where, "a mapping" if where else "a mapping at the top level", value)
        return None
    for key in value:
        if key not in allowed:
            r.add(_join(where, key), f"unknown field {_show(key)}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            r.add(_join(where, key), "required field is missing")
    return value


def _list(r: _Report, where: str, value: object, *, empty: str = "") -> list[tuple[str, Any]]:
    """(`where[i]`, item) pairs of the list at `where`; `empty` reports an empty list."""
    if not isinstance(value, list):
        r.expected(where, "a list", value)
        return []
    if empty and not value:
        r.add(where, empty)
    return [(f"{where}[{i}]", item) for i, item in enumerate(value)]


def _items(r: _Report, where: str, value: object) -> list[tuple[object, object, str]]:
    """(key, value, `where.key`) triples of the mapping at `where`."""
    if not isinstance(value, dict):
        r.expected(where, "a mapping", value)
        return []
    return [(key, val, _join(where, key)) for key, val in value.items()]


def _each(check: Callable[[_Report, str, object], Any]) -> Callable[[_Report, str, object], Any]:
    def run(r: _Report, where: str, value: object) -> tuple[Any, ...]:
        return tuple(v for at, item in _list(r, where, value) if (v := check(r, at, item)))

    return run


def _string(r: _Report, where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        r.expected(where, "a non-empty string", value, "; quote it" * (type(value) is int))
    return str(value)


def _path(r: _Report, where: str, value: object) -> str:
    if (text := _string(r, where, value)) and isinstance(value, str):
        _check_path(r, where, text, what="path")
    return text


def _check_path(r: _Report, where: str, path: str, *, what: str) -> None:
    if not path.startswith("/"):
        r.add(where, f'{what} "{path}" is not absolute')
    elif ".." in path.split("/"):
        r.add(where, f'{what} "{path}" contains ".."')


def _dns_label(r: _Report, where: str, value: object) -> str:
    if problem := labels.dns_label_error(value):
        r.add(where, problem)
    return str(value)


def _choice(*choices: str) -> Callable[[_Report, str, object], str]:
    def check(r: _Report, where: str, value: object) -> str:
        if value not in choices:
            r.expected(where, f"one of {', '.join(choices)}", value)
        return str(value)

    return check


def _boolean(r: _Report, where: str, value: object) -> bool:
    if not isinstance(value, bool):
        r.expected(where, "true or false", value)
    return bool(value)


def _int_in(r: _Report, where: str, value: object, *, low: int, high: int) -> int | None:
    if type(value) is not int or not low <= value <= high:
        r.expected(where, f"an integer {low}..{high}", value)
        return None
    return value


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _join(where: str, key: object) -> str:
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(str(key))}]"


def _show(value: object) -> str:
    """A value as messages show it; strings JSON-quoted so control characters stay visible."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return (
            f"{type(value).__name__.replace('int', 'integer').replace('float', 'number')} {value}"
        )
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 80 else value[:77] + "...")
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


# Field name -> check returning the model-ready value; the order is the one users read.
_CONTAINER: dict[str, Callable[[_Report, str, object], Any]] = {
    "name": _dns_label,
    "image": _image,
    "command": _argv,
    "entrypoint": _argv,
    "working_dir": _path,
    "user": _string,
    "env": _env,
    "env_file": _path,
    "ports": _each(_port),
    "volumes": _volumes,
    "devices": _each(_device),
    "restart": _choice("no", "always", "on-failure", "unless-stopped"),
    "memory": _memory,
    "cpus": _cpus,
    "privileged": _boolean,
    "network_mode": _choice("bridge", "host"),
    "health": _health,
}
