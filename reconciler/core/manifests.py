"""App manifests (`apps/**/*.yaml`, SPEC 2.1): bytes in, a validated `model.AppManifest` out.

Owns the manifest schema and its error messages; `selection`, `planner` and `policy` consume the
values. Pure: no file, network or Docker access (the git adapter reads the bytes, `policy` decides
what a device allows). Every problem of a file is reported in one `errors.ManifestError`.
The fields of one container are parsed in `manifest_fields`; the generic checks (keys, types,
how values are shown) are `_checks`'.

Decisions beyond SPEC 2.1, each turning a fleet-wide failure at apply time into a clear error here:
- `metadata` holds only `name`: the model has no place for labels/annotations, and adding fields
  later is compatible while removing them is not.
- `spec.selector` is required (SPEC 2.1) and `selector: null` is rejected: a forgotten line or
  body must not roll an app out to the whole fleet; `{}` selects every device on purpose.
- `rollout.waves`: the last wave must reach 100 percent, else the rollout never completes (to hold
  one, give the last wave a later `after`); percents never decrease, `after`s strictly increase.
  `rollout.urgent` (a boolean, default false) may stand alone; an empty `rollout: {}` is refused.
- An unquoted port mapping like `22:22` is a YAML base-60 integer: rejected with a hint to quote.
- `ports` with `network_mode: host` are rejected (Docker ignores them); an http/tcp health port
  must be a tcp host port the container publishes, unless it uses the host network.
- Paths may not contain `..` (policy compares host paths by prefix); mount targets are unique per
  container and never `/`; `memory` is at least 6 MiB and `cpus` at least 0.01 (Docker's minimums).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from typing import Any

from reconciler import errors, model
from reconciler.core import _checks, durations, labels, manifest_fields, safe_yaml

API_VERSION = "reconciler/v1"
KIND = "App"
_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_WILDCARD_IPS = frozenset({"", "0.0.0.0"})  # noqa: S104 - compared, never bound


def parse(data: bytes, *, path: str) -> model.AppManifest:
    """Validate one manifest; `revision` is the sha256 hex of `data`. Raises ManifestError."""
    try:
        doc = safe_yaml.load(data, file=path)
    except errors.ProblemsError as exc:
        raise errors.ManifestError(exc.problems) from None
    report = _checks.Report(path, _checks.MANIFEST_WORDING)
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


def _app(r: _checks.Report, doc: object, *, path: str, revision: str) -> model.AppManifest | None:
    if doc is None:
        r.add("", f"file is empty; expected an App manifest (apiVersion: {API_VERSION})")
        return None
    top = r.fields("", doc, allowed=_TOP_FIELDS, required=_TOP_FIELDS)
    if top is None:
        return None
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key in top and top[key] != want:
            r.expected(key, f'"{want}"', top[key])
    meta = r.fields("metadata", top.get("metadata", {}), allowed=("name",))
    name = _checks.dns_label(r, "metadata.name", meta["name"]) if meta and "name" in meta else ""
    if "metadata" in top and meta is not None and "name" not in meta:
        r.add("metadata.name", "required field is missing")
    spec_fields = ("selector", "containers", "rollout")
    if "spec" not in top:
        return None
    spec = r.fields("spec", top["spec"], allowed=spec_fields, required=("selector", "containers"))
    if spec is None:
        return None
    selector = _selector(r, "spec.selector", spec["selector"]) if "selector" in spec else None
    waves, urgent = (
        _rollout(r, "spec.rollout", spec["rollout"]) if "rollout" in spec else ((), False)
    )
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
        urgent=urgent,
    )


def _selector(r: _checks.Report, where: str, value: object) -> model.Selector | None:
    if value is None:
        r.add(where, "expected a mapping, got null; write {} to select every device")
        return None
    body = r.fields(where, value, allowed=("matchLabels", "matchExpressions"))
    if body is None:
        return None
    # null reads as empty, as Kubernetes reads it (`matchLabels:` written with no entries).
    pairs = _checks.label_pairs(r, f"{where}.matchLabels", body.get("matchLabels") or {})
    exprs = r.entries(f"{where}.matchExpressions", body.get("matchExpressions") or [])
    requirements = [req for at, item in exprs if (req := _requirement(r, at, item))]
    return model.Selector(match_labels=pairs, match_expressions=tuple(requirements))


def _requirement(r: _checks.Report, where: str, value: object) -> model.Requirement | None:
    required = ("key", "operator")
    body = r.fields(where, value, allowed=(*required, "values"), required=required)
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
    elif operator in ("Exists", "DoesNotExist") and values not in (None, []):
        # Kubernetes accepts an empty list (or none) here: there is nothing to compare.
        r.add(f"{where}.values", f"operator {operator} takes no values; remove them")
    elif values is not None:
        for at, item in r.entries(f"{where}.values", values):
            if problem := labels.label_value_error(item):
                r.add(at, problem)
    if len(r.problems) > before:
        return None
    return model.Requirement(key=key, operator=operator, values=tuple(values or ()))


def _rollout(r: _checks.Report, where: str, value: object) -> tuple[tuple[model.Wave, ...], bool]:
    """(waves, urgent): `waves` staged over time, `urgent` past maintenance windows and holds;
    either may be left out, not both (an empty rollout is a mistake worth naming)."""
    body = r.fields(where, value, allowed=("waves", "urgent"))
    if body is None:
        return (), False
    if not body:
        r.add(where, "expected waves, urgent or both; omit rollout to update every device at once")
        return (), False
    urgent = _checks.flag(r, f"{where}.urgent", body["urgent"]) if "urgent" in body else False
    if "waves" not in body:
        return (), bool(urgent)
    return _waves(r, where, body), bool(urgent)


def _waves(r: _checks.Report, where: str, body: dict[str, Any]) -> tuple[model.Wave, ...]:
    empty = "expected at least one wave; omit rollout to update every device at once"
    items = r.entries(f"{where}.waves", body["waves"], empty=empty)
    waves: list[tuple[str, model.Wave]] = []
    for at, item in items:
        fields = r.fields(at, item, allowed=("percent", "after"), required=("percent",))
        if fields is None or "percent" not in fields:
            continue
        percent = _checks.int_in(r, f"{at}.percent", fields["percent"], low=1, high=100)
        after = _checks.duration(r, f"{at}.after", fields["after"]) if "after" in fields else 0.0
        if after is None:
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


def _containers(r: _checks.Report, where: str, value: object) -> tuple[model.ContainerSpec, ...]:
    specs: list[model.ContainerSpec] = []
    names: dict[str, str] = {}
    published: list[tuple[str, int, model.PortMapping]] = []  # (container path, index, port)
    for at, item in r.entries(where, value, empty="expected at least one container"):
        if isinstance(item, dict) and isinstance(name := item.get("name"), str):
            if name in names:
                r.add(f"{at}.name", f'duplicate container name "{name}" (also {names[name]})')
            names.setdefault(name, at)
        if spec := _container(r, at, item):
            specs.append(spec)
            published.extend((at, i, port) for i, port in enumerate(spec.ports))
    for i, j in _port_clashes([port for _, _, port in published]):
        (at, index, port), (other_at, other_index, _) = published[i], published[j]
        r.add(
            f"{at}.ports[{index}]",
            f"duplicate host port {port.host_port}/{port.protocol} "
            f"(also {other_at}.ports[{other_index}])",
        )
    return tuple(specs)


def _port_clashes(ports: list[model.PortMapping]) -> list[tuple[int, int]]:
    """(index, index of the first earlier clash) for each port bound twice.

    Two mappings clash on the same host port and protocol when their host IPs are equal or either
    is a wildcard. Linear in the number of ports: a manifest may publish all 65,535 of them.
    """
    first: dict[tuple[int, str], int] = {}  # earliest mapping of a port/protocol
    wildcard: dict[tuple[int, str], int] = {}  # earliest wildcard one
    by_ip: dict[tuple[int, str, str], int] = {}  # earliest one per host IP
    clashes = []
    for i, port in enumerate(ports):
        slot = (port.host_port, port.protocol)
        if port.host_ip in _WILDCARD_IPS:
            earlier = first.get(slot)
            wildcard.setdefault(slot, i)
        else:
            same_ip, any_ip = by_ip.get((*slot, port.host_ip)), wildcard.get(slot)
            earlier = (
                any_ip if same_ip is None else same_ip if any_ip is None else min(same_ip, any_ip)
            )
            by_ip.setdefault((*slot, port.host_ip), i)
        first.setdefault(slot, i)
        if earlier is not None:
            clashes.append((i, earlier))
    return clashes


def _container(r: _checks.Report, where: str, value: object) -> model.ContainerSpec | None:
    body = r.fields(
        where, value, allowed=tuple(manifest_fields.CONTAINER), required=("name", "image")
    )
    if body is None:
        return None
    before = len(r.problems)
    # Each check returns the model-ready value; absent fields keep ContainerSpec's defaults.
    values = {
        key: check(r, f"{where}.{key}", body[key])
        for key, check in manifest_fields.CONTAINER.items()
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
