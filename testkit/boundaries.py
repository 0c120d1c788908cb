"""The input boundaries under fuzz, their valid seed documents, and the hypothesis strategies
that mutate them.

Shared by the fast profile (`tests/fuzz/test_inputs.py`, in the normal test run) and the long
one (`bench/fuzz_inputs.py`). Each boundary is a function taking bytes that must either return
or raise its documented error (`ACCEPTED`); everything else is a crash. On success the value is
also pushed through what consumes it later on a device (rollout decisions, the engine's create
arguments, policy, a release's serialize/parse round trip), so "validated" means "usable".

Two kinds of input per boundary: structure-aware (a valid seed document with one field replaced
by a hostile value, deleted, or given an unknown sibling, then dumped as YAML or JSON, hostile
raw YAML scalars such as `!!bool maybe` spliced in as text) and raw (the seed's bytes with
random byte-level edits and hostile fragments inserted).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

from reconciler import errors, model
from reconciler.adapters import docker_translate
from reconciler.core import (
    desired,
    durations,
    inventory,
    manifests,
    policy,
    release,
    safe_yaml,
    settings,
    urls,
)

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
MESSAGE_LIMIT = 1100  # text.MESSAGE_LIMIT plus room for nothing else: every line is cut there


@dataclass(frozen=True, eq=False)  # hashed by identity: seeds are dicts
class Boundary:
    name: str
    run: Callable[[bytes], object]
    seed: Any  # a valid document (dumped as YAML, or JSON for the release)
    accepted: tuple[type[BaseException], ...]
    as_json: bool = False


def _manifest(data: bytes) -> object:
    app = manifests.parse(data, path="apps/x/app.yaml")
    decisions = desired.decide(
        [app],
        labels={"role": "gateway", "ring": "canary"},
        device_name="gw-01",
        now=NOW,
        since={app.path: NOW - dt.timedelta(hours=1)},
    )
    for i, spec in enumerate(app.containers):
        wanted = model.DesiredContainer(
            app=app.name, revision=app.revision, spec=spec, spec_digest="d", order=i
        )
        docker_translate.create_args(wanted, namespace="fz", name=f"fz-{i}")
    policy.check(app, model.DevicePolicy())
    return decisions


def _settings(data: bytes) -> object:
    loaded = settings.load(data, file="config.yaml", env={}, hostname="gw-01")
    durations.format_duration(loaded.source.poll_interval)
    durations.format_duration(loaded.health.timeout)
    urls.redact(loaded.source.url)
    return loaded.metrics.address


def _labels(data: bytes) -> object:
    return settings.merge_label_files({"site": "berlin"}, [("labels.d/a.yaml", data)])


def _inventory(data: bytes) -> object:
    return inventory.parse(data, path=inventory.PATH)


def _release(data: bytes) -> object:
    parsed = release.parse(data)
    again = release.parse(release.serialize(parsed))
    assert again == parsed, "a parsed release must serialize to bytes that parse the same"
    release.is_expired(parsed, NOW)
    return parsed


def _yaml(data: bytes) -> object:
    return safe_yaml.load(data, file="any.yaml")


def _duration(data: bytes) -> object:
    seconds = durations.parse_duration(data.decode("utf-8", "replace"))
    return durations.format_duration(seconds)


MANIFEST_SEED: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "App",
    "metadata": {"name": "sensor-gateway"},
    "spec": {
        "selector": {
            "matchLabels": {"role": "gateway"},
            "matchExpressions": [
                {"key": "ring", "operator": "In", "values": ["canary", "prod"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        },
        "containers": [
            {
                "name": "web",
                "image": "127.0.0.1:5000/gw:1.4.2",
                "command": ["httpd", "-f", "-p", "80"],
                "env": {"LOG_LEVEL": "info"},
                "env_file": "/etc/reconciler/secrets/gw.env",
                "ports": ["8080:80", "127.0.0.1:9000:9000/udp"],
                "volumes": ["gw-data:/data", "/srv/gw:/config:ro"],
                "devices": ["/dev/ttyUSB0"],
                "restart": "unless-stopped",
                "memory": "128m",
                "cpus": 0.5,
                "health": {"http": {"port": 8080, "path": "/healthz"}},
            }
        ],
        "rollout": {"waves": [{"percent": 10}, {"percent": 50, "after": "6h"}, {"percent": 100}]},
    },
}
MANIFEST_SEED["spec"]["rollout"]["waves"][2]["after"] = "24h"

SETTINGS_SEED: dict[str, Any] = {
    "device": {"name": "gw-berlin-01", "labels": {"site": "berlin", "role": "gateway"}},
    "source": {
        "url": "https://git.example.com/fleet.git",
        "mirrors": ["https://mirror-eu.example.com/fleet.git"],
        "branch": "main",
        "poll_interval": "60s",
        "jitter": 0.1,
    },
    "trust": {
        "identities": [
            {
                "identity": "https://github.com/acme/fleet/.github/workflows/r.yml@refs/heads/main",
                "issuer": "https://token.actions.githubusercontent.com",
            }
        ],
        "allow_unsigned": False,
    },
    "runtime": {"docker_host": "unix:///var/run/docker.sock", "namespace": ""},
    "health": {"timeout": "120s", "stable_for": "10s", "commands": ["/bin/true"]},
    "policy": {"allowed_registries": ["127.0.0.1:5000"], "allowed_host_paths": ["/srv"]},
    "state_dir": "/var/lib/reconciler",
    "metrics": {"listen": "127.0.0.1:9469", "pushgateway": ""},
}

INVENTORY_SEED = {
    "devices": [
        {"name": "gw-berlin-01", "labels": {"site": "berlin", "ring": "canary"}},
        {"name": "gw-paris-01", "labels": {"site": "paris"}},
    ]
}
LABELS_SEED = {"ring": "prod", "role": "gateway", "example.com/zone": "a-1"}
RELEASE_SEED = json.loads(
    release.serialize(
        release.build(
            {"apps/gw/app.yaml": b"a", "apps/web/app.yaml": b"b"},
            previous=None,
            now=NOW,
            source_commit="0" * 40,
            images={"apps/gw/app.yaml": {"web": "127.0.0.1:5000/gw@sha256:" + "a" * 64}},
        )
    )
)

BOUNDARIES = (
    Boundary("manifest", _manifest, MANIFEST_SEED, (errors.ManifestError,)),
    Boundary("settings", _settings, SETTINGS_SEED, (errors.SettingsError,)),
    Boundary("labels", _labels, LABELS_SEED, (errors.SettingsError,)),
    Boundary("inventory", _inventory, INVENTORY_SEED, (errors.ProblemsError,)),
    Boundary("release", _release, RELEASE_SEED, (errors.ReleaseError,), as_json=True),
    Boundary("yaml", _yaml, MANIFEST_SEED, (errors.ProblemsError,)),
    Boundary("duration", _duration, "1h30m", (ValueError,)),
)

# --- hostile values ---------------------------------------------------------------------------

# Spliced into the dumped text in place of a placeholder string: scalars safe_dump cannot write.
RAW_SCALARS = (
    "!!int abc",
    "!!float abc",
    "!!bool maybe",
    "!!timestamp text",
    "!!binary ~~~",
    "!!python/object/apply:os.system [true]",
    "2020-13-01",
    "2020-02-30",
    "2020-01-01 25:00:00",
    "9" * 5000,
    "1" + ":1" * 2000,
    "0x" + "f" * 300,
    "-" + "9" * 4400,
    ".nan",
    "-.inf",
    "1e999",
    "*nowhere",
    "&a [*a]",
    "!!set {a, b}",
    "!!omap [a: 1, b: 2]",
    '"\\0"',
    '"a\\x00b"',
    '"\\e[31mred\\n"',
    "[" * 70 + "]" * 70,
    "{" * 70 + "}" * 70,
    "{<<: 5}",
)
HOSTILE_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**31,
    2**63,
    2**64 + 1,
    10**99,
    -(10**40),
    1e300,
    -1e300,
    1e-300,
    float("inf"),
    float("nan"),
    "",
    " ",
    "\x00",
    "a\x00b",
    "line\nbreak\x1b[31m",
    "x" * 100_000,
    "999999999999d",
    "1.0e+300",
    "a.lock/b",
    "@",
    "-rf",
    "../../etc",
    "/",
    "ftp://admin:TOKEN@host",
    "\u202egnp.exe",
    "é" * 70,
    [],
    {},
    [None],
    {"": None},
    {1: 2},
    {None: "x"},
    [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]],
    dt.date(2020, 1, 1),
    dt.datetime(1, 1, 1, tzinfo=dt.UTC),
)
_PLACEHOLDER = "FUZZ-RAW-{}-FUZZ"


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in `doc` (keys of mappings, indexes of lists), parents first."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _mutate(doc: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "sibling" and isinstance(parent, dict):
        parent[value if isinstance(value, str | int | type(None)) else "unknown"] = value
    elif action == "sibling":
        parent.append(value)
    elif action == "as_key" and isinstance(parent[last], dict):
        parent[last] = {value if isinstance(value, str | int | float) else "k": 1}
    else:
        parent[last] = value
    return doc


# libyaml's emitter when present: dumping dominates a case's cost with the pure-Python one.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(doc: Any, *, as_json: bool) -> bytes:
    if as_json:
        return json.dumps(doc, default=str).encode()
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True).encode()


@functools.cache
def _seed_paths(boundary: Boundary) -> list[tuple[Any, ...]]:
    return _paths(boundary.seed)


@functools.cache
def _seed_bytes(boundary: Boundary) -> bytes:
    return dump(boundary.seed, as_json=boundary.as_json)


@st.composite
def structured(draw: st.DrawFn, boundary: Boundary) -> bytes:
    """The seed with one to three fields mutated, dumped; raw YAML scalars spliced in as text."""
    doc = boundary.seed
    raw: list[str] = []
    for round_ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_seed_paths(boundary) if round_ == 0 else _paths(doc)))
        action = draw(st.sampled_from(("replace", "replace", "delete", "sibling", "as_key")))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            value = draw(st.sampled_from(HOSTILE_VALUES))
        elif kind == 1 and not boundary.as_json:
            raw.append(draw(st.sampled_from(RAW_SCALARS)))
            value = _PLACEHOLDER.format(len(raw) - 1)
        elif kind == 2:
            value = draw(st.text(max_size=40))
        else:
            value = draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.none()))
        if not path and action in ("delete", "sibling", "as_key"):
            action = "replace"
        doc = _mutate(doc, path, action, value)
    data = dump(doc, as_json=boundary.as_json)
    for i, scalar in enumerate(raw):
        data = data.replace(_PLACEHOLDER.format(i).encode(), scalar.encode())
    return data


FRAGMENTS = (
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\x1b[2J",
    b"\r",
    b"\t",
    b"[" * 600,
    b"- " * 300,
    b"{a: " * 100,
    b"&x ",
    b"*x",
    b"!!int ",
    b"!!python/name:os.system",
    b"%YAML 1.1\n---\n",
    b"\n---\n",
    b"? ",
    b": ",
    b'"\\u0000"',
    b"9" * 5000,
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
)


@st.composite
def raw_bytes(draw: st.DrawFn, boundary: Boundary) -> bytes:
    """The seed's bytes with one to eight byte-level edits."""
    data = bytearray(_seed_bytes(boundary))
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("flip", "insert", "fragment", "delete", "repeat")))
        if op == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif op == "fragment":
            data[where:where] = draw(st.sampled_from(FRAGMENTS))
        elif op == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        else:
            span = bytes(data[where : where + draw(st.integers(1, 32))])
            data[where:where] = span * draw(st.integers(1, 50))
    return bytes(data)


def inputs(boundary: Boundary) -> st.SearchStrategy[bytes]:
    """Both kinds of input for `boundary`, plus plain random bytes now and then."""
    return st.one_of(structured(boundary), raw_bytes(boundary), st.binary(max_size=64))


def check(boundary: Boundary, data: bytes) -> BaseException | None:
    """Run one input; None when it was a value or the documented error with sane messages,
    else the exception to report (an uncaught one, or an AssertionError on a bad message)."""
    try:
        boundary.run(data)
    except boundary.accepted as exc:
        messages = [str(p) for p in exc.problems] if isinstance(exc, errors.ProblemsError) else []
        messages = messages or [str(exc)]
        for message in messages:
            if len(message) > MESSAGE_LIMIT or not message.isprintable():
                return AssertionError(f"unbounded or unescaped message: {message[:200]!r}")
        return None
    except Exception as exc:
        return exc
    return None
