"""App manifest parsing and validation (SPEC 2.1)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
import yaml

from reconciler import errors, model
from reconciler.core import manifests

PATH = "apps/gw/app.yaml"

SPEC_EXAMPLE = b"""\
apiVersion: reconciler/v1
kind: App
metadata:
  name: sensor-gateway            # DNS label: [a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?
spec:
  selector:                        # Kubernetes label-selector semantics
    matchLabels: {role: gateway}
    matchExpressions:
      - {key: ring, operator: In, values: [canary, prod]}   # In, NotIn, Exists, DoesNotExist
  containers:                      # started in this order
    - name: web                    # DNS label, unique in the app
      image: 127.0.0.1:5000/gw:1.4.2            # tag or @sha256 digest
      command: [httpd, -f, -p, "80"]            # optional; entrypoint, working_dir, user likewise
      env: {LOG_LEVEL: info}
      env_file: /etc/reconciler/secrets/gw.env  # optional, read ON THE DEVICE
      ports: ["8080:80", "127.0.0.1:9000:9000/udp"]
      volumes: ["gw-data:/data", "/srv/gw:/config:ro"]   # named volume or host bind
      devices: ["/dev/ttyUSB0"]                           # policy-gated
      restart: unless-stopped      # no | always | on-failure | unless-stopped
      memory: 128m                 # optional; cpus: 0.5 likewise
      health:                      # optional; one of http, tcp, exec, docker
        http: {port: 8080, path: /healthz}       # host port; success = status 200..399
  rollout:                         # optional staged rollout, decided on each device
    waves:
      - {percent: 10}
      - {percent: 50, after: 6h}
      - {percent: 100, after: 24h}
"""


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "reconciler/v1",
        "kind": "App",
        "metadata": {"name": "gw"},
        "spec": {"selector": {}, "containers": [{"name": "web", "image": "nginx:1.27"}]},
    }


def dump(doc: object) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def problems_of(data: bytes, path: str = PATH) -> list[errors.Problem]:
    with pytest.raises(errors.ManifestError) as caught:
        manifests.parse(data, path=path)
    return list(caught.value.problems)


DELETE = object()
C0 = ("spec", "containers", 0)


def edited(*edits: tuple[tuple[Any, ...], object]) -> bytes:
    doc = minimal()
    for keys, value in edits:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = copy.deepcopy(value)
    return dump(doc)


def test_spec_example_parses_to_the_expected_model() -> None:
    manifest = manifests.parse(SPEC_EXAMPLE, path=PATH)

    assert manifest == model.AppManifest(
        name="sensor-gateway",
        path=PATH,
        revision=hashlib.sha256(SPEC_EXAMPLE).hexdigest(),
        selector=model.Selector(
            match_labels=(("role", "gateway"),),
            match_expressions=(model.Requirement("ring", "In", ("canary", "prod")),),
        ),
        containers=(
            model.ContainerSpec(
                name="web",
                image="127.0.0.1:5000/gw:1.4.2",
                command=("httpd", "-f", "-p", "80"),
                env=(("LOG_LEVEL", "info"),),
                env_file="/etc/reconciler/secrets/gw.env",
                ports=(
                    model.PortMapping(8080, 80),
                    model.PortMapping(9000, 9000, protocol="udp", host_ip="127.0.0.1"),
                ),
                volumes=(
                    model.VolumeMount("gw-data", "/data"),
                    model.VolumeMount("/srv/gw", "/config", read_only=True),
                ),
                devices=(model.DeviceMapping("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm"),),
                restart="unless-stopped",
                memory=128 * 1024 * 1024,
                health=model.HealthCheck(kind="http", port=8080, path="/healthz"),
            ),
        ),
        waves=(model.Wave(10, 0.0), model.Wave(50, 6 * 3600.0), model.Wave(100, 24 * 3600.0)),
    )


def test_omitted_fields_take_their_documented_defaults() -> None:
    manifest = manifests.parse(edited(), path=PATH)

    assert manifest.selector == model.Selector()
    assert manifest.waves == ()
    (web,) = manifest.containers
    assert (web.restart, web.network_mode, web.privileged) == ("unless-stopped", "bridge", False)
    assert (web.command, web.memory, web.cpus, web.health) == (None, None, None, None)


def test_every_field_is_accepted_in_its_other_forms() -> None:
    container = {
        "name": "agent",
        "image": "registry.example.com:5000/team/agent:v2@sha256:" + "a" * 64,
        "entrypoint": ["/bin/sh", "-c"],
        "working_dir": "/app",
        "user": "1000:1000",
        "env": {"N": 3, "F": 1.5, "B": True, "S": ""},
        "volumes": ["/srv/x:/x:rw"],
        "devices": ["/dev/ttyS0:/dev/serial:rw", "/dev/gpiomem:r"],
        "restart": "on-failure",
        "memory": 512 * 1024 * 1024,
        "cpus": 2,
        "privileged": True,
        "network_mode": "host",
        "health": {"exec": ["sh", "-c", "true"]},
    }
    (spec,) = manifests.parse(edited((C0, container)), path=PATH).containers

    assert spec.env == (("B", "true"), ("F", "1.5"), ("N", "3"), ("S", ""))
    assert spec.volumes == (model.VolumeMount("/srv/x", "/x", read_only=False),)
    assert spec.devices == (
        model.DeviceMapping("/dev/ttyS0", "/dev/serial", "rw"),
        model.DeviceMapping("/dev/gpiomem", "/dev/gpiomem", "r"),
    )
    assert (spec.cpus, spec.privileged, spec.network_mode) == (2.0, True, "host")
    assert spec.health == model.HealthCheck(kind="exec", command=("sh", "-c", "true"))


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ({"tcp": {"port": 8080}}, model.HealthCheck(kind="tcp", port=8080)),
        ({"http": {"port": 8080}}, model.HealthCheck(kind="http", port=8080, path="/")),
        ({"docker": True}, model.HealthCheck(kind="docker")),
    ],
)
def test_health_check_kinds_parse(health: object, expected: model.HealthCheck) -> None:
    data = edited((C0, {"name": "web", "image": "a", "ports": ["8080:80"], "health": health}))
    assert manifests.parse(data, path=PATH).containers[0].health == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8192k", 8192 * 1024),
        ("128m", 128 * 1024**2),
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("256MiB", 256 * 1024**2),
        ("1.5g", 3 * 512 * 1024**2),
        (8 * 1024**2, 8 * 1024**2),
    ],
)
def test_memory_accepts_docker_units_and_stores_bytes(text: object, expected: int) -> None:
    data = edited((C0, {"name": "web", "image": "a", "memory": text}))
    assert manifests.parse(data, path=PATH).containers[0].memory == expected


REJECTIONS: list[tuple[str, tuple[Any, ...], object, str, str]] = [
    ("wrong api version", ("apiVersion",), "v1", "apiVersion", 'expected "reconciler/v1"'),
    ("wrong kind", ("kind",), "Deployment", "kind", 'expected "App", got "Deployment"'),
    ("unknown top field", ("status",), {}, "status", 'unknown field "status"'),
    ("missing metadata", ("metadata",), DELETE, "metadata", "required field is missing"),
    ("bad app name", ("metadata", "name"), "Gw_1", "metadata.name", "not a DNS label"),
    ("metadata labels", ("metadata", "labels"), {}, "metadata.labels", "allowed: name"),
    ("no containers", ("spec", "containers"), [], "spec.containers", "at least one container"),
    ("containers map", ("spec", "containers"), {}, "spec.containers", "got a mapping"),
    ("selector null", ("spec", "selector"), None, "spec.selector", "write {}"),
    ("label key", ("spec", "selector"), {"matchLabels": {"-x": "a"}},
     "spec.selector.matchLabels.-x", "label key"),
    ("label value", ("spec", "selector"), {"matchLabels": {"ring": 1}},
     "spec.selector.matchLabels.ring", "got int"),
    ("selector field", ("spec", "selector"), {"labels": {}}, "spec.selector.labels", "matchLabels"),
]  # fmt: skip

# (case, container field, value, path under spec.containers[0], message fragment)
CONTAINER_REJECTIONS: list[tuple[str, str, object, str, str]] = [
    ("bad container name", "name", "Web", "name", "not a DNS label"),
    ("missing image", "image", DELETE, "image", "required field"),
    ("upper-case image", "image", "Nginx", "image", 'got "Nginx"'),
    ("short digest", "image", "a@sha256:ab", "image", "64 hex"),
    ("empty image", "image", "", "image", "image reference"),
    ("typo field", "imagee", "x", "imagee", "allowed: name, image"),
    ("string command", "command", "httpd -f", "command", "[httpd, -f]"),
    ("number in argv", "entrypoint", [80], "entrypoint[0]", "quote"),
    ("empty command", "command", [], "command", "non-empty list"),
    ("relative workdir", "working_dir", "app", "working_dir", "abs"),
    ("numeric user", "user", 1000, "user", "got integer 1000; quote"),
    ("env name", "env", {"1X": "a"}, "env.1X", "variable name"),
    ("env list value", "env", {"A": [1]}, "env.A", "got a list"),
    ("env null value", "env", {"A": None}, "env.A", "got null"),
    ("env as list", "env", ["A=1"], "env", "expected a mapping"),
    ("relative env_file", "env_file", "gw.env", "env_file", "abs"),
    ("port shape", "ports", ["80"], "ports[0]", 'got "80"'),
    ("base-60 port", "ports", [1342], "ports[0]", "base-60"),
    ("port range", "ports", ["0:80"], "ports[0]", "port 0 is out"),
    ("port range high", "ports", ["80:65536"], "ports[0]", "65536"),
    ("port ip", "ports", ["1.2.3:80:80"], "ports[0]", "IPv4"),
    ("port proto", "ports", ["80:80/sctp"], "ports[0]", "tcp|udp"),
    ("volume name", "volumes", ["b@d:/d"], "volumes[0]", "neither"),
    ("volume target", "volumes", ["v:data"], "volumes[0]", "absolute"),
    ("volume root", "volumes", ["v:/"], "volumes[0]", 'target "/"'),
    ("volume mode", "volumes", ["v:/d:z"], "volumes[0]", "ro, rw"),
    ("volume dotdot", "volumes", ["/srv/../etc:/d"], "volumes[0]", ".."),
    ("volume shape", "volumes", ["/d"], "volumes[0]", "source:/target"),
    ("volume twice", "volumes", ["aa:/d", "bb:/d"], "volumes[1]", "dupl"),
    ("device path", "devices", ["/tmp/x"], "devices[0]", "/dev/"),
    ("device perms", "devices", ["/dev/x:/dev/x:rwx"], "devices[0]", "rwm"),
    ("restart", "restart", "sometimes", "restart", "unless-stopped"),
    ("memory text", "memory", "lots", "memory", "like 512k"),
    ("memory zero", "memory", 0, "memory", "minimum of 6m"),
    ("memory tiny", "memory", "1m", "memory", "minimum of 6m"),
    ("memory bool", "memory", True, "memory", "got true"),
    ("cpus zero", "cpus", 0, "cpus", "minimum"),
    ("cpus text", "cpus", "half", "cpus", 'got "half"'),
    ("privileged", "privileged", "yes", "privileged", "true or false"),
    ("network", "network_mode", "none", "network_mode", "bridge, host"),
    ("health none", "health", {}, "health", "got none"),
    ("health two", "health", {"docker": True, "tcp": {"port": 1}}, "health", "got docker, tcp"),
    ("health kind", "health", {"grpc": {}}, "health.grpc", "unknown"),
    ("http no port", "health", {"http": {}}, "health.http.port", "req"),
    ("tcp path", "health", {"tcp": {"port": 1, "path": "/"}}, "health.tcp.path", "unknown"),
    ("docker false", "health", {"docker": False}, "health.docker", "true"),
    ("exec string", "health", {"exec": "true"}, "health.exec", "list"),
    ("health port", "health", {"tcp": {"port": 81}}, "health", "81"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "value", "field", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in REJECTIONS]
    + [
        pytest.param((*C0, key), value, f"spec.containers[0].{where}", fragment, id=case)
        for case, key, value, where, fragment in CONTAINER_REJECTIONS
    ],
)
def test_invalid_field_is_rejected_with_its_path(
    keys: tuple[Any, ...], value: object, field: str, fragment: str
) -> None:
    problems = problems_of(edited((keys, value)))
    found = [p for p in problems if p.field == field]

    assert found, f"no problem at {field}: {problems}"
    assert any(fragment in p.message for p in found), found
    assert all(p.file == PATH for p in found)


SELECTOR_EXPRESSIONS = [
    ({"key": "ring", "operator": "Near", "values": ["a"]}, "operator", "In, NotIn, Exists"),
    ({"key": "ring", "operator": "In"}, "values", "non-empty list"),
    ({"key": "ring", "operator": "NotIn", "values": []}, "values", "non-empty list"),
    ({"key": "ring", "operator": "Exists", "values": ["a"]}, "values", "takes no values"),
    ({"key": "ring", "operator": "DoesNotExist", "values": ["a"]}, "values", "takes no values"),
    ({"key": "ring", "operator": "In", "values": ["a b"]}, "values[0]", "label value"),
    ({"key": "a/b/c", "operator": "Exists"}, "key", "label key"),
    ({"operator": "Exists"}, "key", "required field is missing"),
]


@pytest.mark.parametrize(("expression", "field", "fragment"), SELECTOR_EXPRESSIONS)
def test_bad_match_expression_is_rejected_by_kubernetes_rules(
    expression: dict[str, object], field: str, fragment: str
) -> None:
    data = edited((("spec", "selector"), {"matchExpressions": [expression]}))
    where = f"spec.selector.matchExpressions[0].{field}"

    assert any(p.field == where and fragment in p.message for p in problems_of(data))


def test_valid_match_expressions_keep_their_values() -> None:
    exprs = [
        {"key": "ring", "operator": "NotIn", "values": ["prod"]},
        {"key": "x", "operator": "Exists"},
    ]
    selector = manifests.parse(
        edited((("spec", "selector"), {"matchExpressions": exprs})), path=PATH
    ).selector

    assert selector.match_expressions == (
        model.Requirement("ring", "NotIn", ("prod",)),
        model.Requirement("x", "Exists", ()),
    )


WAVES = [
    ([{"percent": 0}, {"percent": 100, "after": "1h"}], "waves[0].percent", "integer 1..100"),
    ([{"percent": 101}], "waves[0].percent", "integer 1..100"),
    ([{"percent": "10%"}, {"percent": 100, "after": "1h"}], "waves[0].percent", 'got "10%"'),
    (
        [{"percent": 10, "after": "1 hour"}, {"percent": 100, "after": "2h"}],
        "waves[0].after",
        "60s",
    ),
    ([{"percent": 10, "after": 60}, {"percent": 100, "after": "2h"}], "waves[0].after", "60s"),
    ([{"percent": 50}, {"percent": 10, "after": "1h"}], "waves[1].percent", "below"),
    ([{"percent": 10, "after": "1h"}, {"percent": 100, "after": "60m"}], "waves[1].after", "1h"),
    ([{"percent": 10}, {"percent": 100}], "waves[1].after", "not later"),
    ([{"percent": 10}, {"percent": 50, "after": "1h"}], "waves[1].percent", "must reach 100"),
    ([{"percent": 100, "when": "now"}], "waves[0].when", "allowed: percent, after"),
    ([{"after": "1h"}], "waves[0].percent", "required field is missing"),
    ([], "waves", "at least one wave"),
]


@pytest.mark.parametrize(("waves", "field", "fragment"), WAVES)
def test_bad_rollout_wave_is_rejected(waves: object, field: str, fragment: str) -> None:
    data = edited((("spec", "rollout"), {"waves": waves}))

    problems = problems_of(data)
    assert any(p.field == f"spec.rollout.{field}" and fragment in p.message for p in problems)


def test_an_empty_rollout_is_rejected() -> None:
    problems = problems_of(edited((("spec", "rollout"), {})))
    assert [(p.field, p.message) for p in problems] == [
        (
            "spec.rollout",
            "expected waves, urgent or both; omit rollout to update every device at once",
        )
    ]


def test_urgent_is_a_flag_that_defaults_to_false_and_needs_no_waves() -> None:
    urgent = manifests.parse(edited((("spec", "rollout"), {"urgent": True})), path=PATH)
    assert urgent.urgent is True and urgent.waves == ()
    both = manifests.parse(
        edited((("spec", "rollout"), {"urgent": False, "waves": [{"percent": 100}]})), path=PATH
    )
    assert both.urgent is False and len(both.waves) == 1
    assert manifests.parse(dump(minimal()), path=PATH).urgent is False
    problems = problems_of(edited((("spec", "rollout"), {"urgent": "yes"})))
    assert [(p.field, p.message) for p in problems] == [
        ("spec.rollout.urgent", 'expected true or false, got "yes"')
    ]


def test_rollout_waves_become_seconds_and_first_after_defaults_to_zero() -> None:
    waves = [{"percent": 5}, {"percent": 5, "after": "90m"}, {"percent": 100, "after": "1d"}]
    manifest = manifests.parse(edited((("spec", "rollout"), {"waves": waves})), path=PATH)

    assert manifest.waves == (model.Wave(5, 0.0), model.Wave(5, 5400.0), model.Wave(100, 86400.0))


def test_duplicate_container_names_are_rejected_on_the_later_one() -> None:
    web = {"name": "web", "image": "a"}
    problems = problems_of(
        edited((("spec", "containers"), [web, {"name": "db", "image": "b"}, web]))
    )

    assert [(p.field, p.message) for p in problems] == [
        ("spec.containers[2].name", 'duplicate container name "web" (also spec.containers[0])')
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [("8080:80", "8080:81"), ("127.0.0.1:8080:80", "8080:81"), ("0.0.0.0:53:53/udp", "53:53/udp")],
)
def test_the_same_host_port_twice_in_one_app_is_rejected(first: str, second: str) -> None:
    containers = [
        {"name": "a", "image": "a", "ports": [first]},
        {"name": "b", "image": "b", "ports": [second]},
    ]
    problems = problems_of(edited((("spec", "containers"), containers)))

    assert [p.field for p in problems] == ["spec.containers[1].ports[0]"]
    assert "duplicate host port" in problems[0].message
    assert "spec.containers[0].ports[0]" in problems[0].message


@pytest.mark.parametrize(
    "ports", [["8080:80", "8080:80/udp"], ["127.0.0.1:8080:80", "127.0.0.2:8080:80"]]
)
def test_a_host_port_may_repeat_on_another_protocol_or_address(ports: list[str]) -> None:
    data = edited(((*C0, "ports"), ports))
    assert len(manifests.parse(data, path=PATH).containers[0].ports) == 2


def test_ports_are_rejected_with_the_host_network() -> None:
    data = edited(((*C0, "ports"), ["80:80"]), ((*C0, "network_mode"), "host"))
    assert [p.field for p in problems_of(data)] == ["spec.containers[0].ports"]


def test_unquoted_base60_port_in_real_yaml_gets_a_quoting_hint() -> None:
    data = dump(minimal()).replace(b"image: nginx:1.27", b"image: nginx:1.27\n    ports: [22:22]")
    (problem,) = problems_of(data)

    assert problem.field == "spec.containers[0].ports[0]"
    assert "got integer 1342; quote it" in problem.message


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    data = b"""\
apiVersion: reconciler/v2
kind: App
metadata: {name: Bad_Name}
spec:
  selector: {}
  containers:
    - {name: web, image: "nginx:1", ports: ["80"], restart: sometimes}
    - {name: web, image: "NGINX", colour: blue}
  rollout: {waves: [{percent: 200}]}
"""
    problems = problems_of(data)

    assert {p.field for p in problems} == {
        "apiVersion",
        "metadata.name",
        "spec.containers[0].ports[0]",
        "spec.containers[0].restart",
        "spec.containers[1].name",
        "spec.containers[1].image",
        "spec.containers[1].colour",
        "spec.rollout.waves[0].percent",
    }
    assert (
        str(problems[0])
        == 'apps/gw/app.yaml: apiVersion: expected "reconciler/v1", got "reconciler/v2"'
    )


def test_billion_laughs_manifest_is_rejected_as_alias_expansion() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (problem,) = problems_of("\n".join(lines).encode())

    assert problem.file == PATH
    assert "expands to more than" in problem.message


def test_manifest_over_one_mebibyte_is_rejected_before_parsing() -> None:
    data = dump(minimal()) + b"#" * (1024 * 1024)
    (problem,) = problems_of(data)
    assert "over the limit of 1048576 bytes" in problem.message


def test_non_utf8_manifest_is_rejected() -> None:
    (problem,) = problems_of(dump(minimal()).replace(b"gw", b"g\xffw"))
    assert "not valid UTF-8" in problem.message


def test_duplicate_keys_are_rejected_not_silently_overwritten() -> None:
    data = dump(minimal()).replace(b"kind: App", b"kind: App\nkind: App")
    (problem,) = problems_of(data)
    assert "duplicate key 'kind'" in problem.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "file is empty"),
        (b"- a\n", "expected a mapping at the top level, got a list"),
        (b"a: [", "invalid YAML"),
    ],
)
def test_a_document_that_is_no_manifest_is_rejected(data: bytes, fragment: str) -> None:
    (problem,) = problems_of(data)
    assert (problem.field, fragment in problem.message) == ("", True)


def test_parse_many_collects_problems_of_all_files_and_rejects_a_second_app_name() -> None:
    other = minimal()
    other["metadata"]["name"] = "db"
    files = {
        "apps/z/app.yaml": dump(minimal()),
        "apps/x/app.yaml": dump(minimal()),
        "apps/db/app.yaml": dump(other),
        "apps/bad/app.yaml": b"kind: App\n",
    }
    found, problems = manifests.parse_many(files)

    assert [m.path for m in found] == ["apps/db/app.yaml", "apps/x/app.yaml"]
    assert {p.file for p in problems} == {"apps/bad/app.yaml", "apps/z/app.yaml"}
    assert str(problems[-1]) == (
        'apps/z/app.yaml: metadata.name: duplicate app name "gw" (also in apps/x/app.yaml)'
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("apps/gw/app.yaml", True),
        ("apps/gw/app.yml", True),
        ("apps/team/gw/app.yaml", True),
        ("apps/top.yaml", True),
        ("apps/gw/README.md", False),
        ("devices/inventory.yaml", False),
        ("app.yaml", False),
        ("other/apps/gw/app.yaml", False),
        ("apps/../x.yaml", False),
        ("apps//x.yaml", False),
    ],
)
def test_manifest_paths_are_yaml_files_under_apps(path: str, expected: bool) -> None:
    assert manifests.is_manifest_path(path) is expected


def test_a_container_missing_its_image_still_has_its_other_fields_checked() -> None:
    data = edited((C0, {"name": "web", "ports": ["80"]}))
    assert [p.field for p in problems_of(data)] == [
        "spec.containers[0].image",
        "spec.containers[0].ports[0]",
    ]


# --- selectors as Kubernetes has them; values every consumer can take ---------------------------


def test_a_manifest_without_a_selector_is_refused_and_an_empty_one_selects_everything() -> None:
    (problem,) = problems_of(edited((("spec", "selector"), DELETE)))
    assert (problem.field, problem.message) == ("spec.selector", "required field is missing")
    assert manifests.parse(edited((("spec", "selector"), {})), path=PATH).selector == (
        model.Selector()
    )


@pytest.mark.parametrize("operator", ["Exists", "DoesNotExist"])
def test_exists_and_does_not_exist_take_an_empty_values_list(operator: str) -> None:
    expression = {"key": "ring", "operator": operator, "values": []}
    manifest = manifests.parse(
        edited((("spec", "selector"), {"matchExpressions": [expression]})), path=PATH
    )
    assert manifest.selector.match_expressions == (model.Requirement("ring", operator, ()),)


def test_null_match_labels_and_expressions_read_as_empty() -> None:
    data = edited((("spec", "selector"), {"matchLabels": None, "matchExpressions": None}))
    assert manifests.parse(data, path=PATH).selector == model.Selector()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpus", 1.0e300, "1e+300 is over the engine's maximum of 9223372036"),
        ("cpus", float("inf"), "expected a number of CPUs"),
        ("memory", 2**63, "is over the engine's limit of 9223372036854775807 bytes"),
        ("memory", "9" * 60 + "g", "is over the engine's limit"),
        ("memory", "9" * 400, "expected bytes or a size"),
        ("image", "a" * 100_000, "image reference of 100000 characters, over the limit of 455"),
        ("command", ["a\x00b"], "must not contain a NUL byte"),
        ("env", {"A": "x\x00"}, "must not contain a NUL byte"),
        ("env_file", "/etc/x\x00.env", "must not contain a NUL byte"),
        ("working_dir", "/srv\x00", "must not contain a NUL byte"),
        ("volumes", ["/srv/a\x00:/data"], "must not contain a NUL byte"),
        ("devices", ["/dev/tty\x00"], "must not contain a NUL byte"),
        ("command", ["x" * 200_000], "over the kernel's limit of 131071 per argument"),
        ("env", {"A": "x" * 200_000}, "over the kernel's limit of 131071 per argument"),
        ("working_dir", "/" + "a" * 5000, "longer than the kernel's limit of 4095 bytes"),
    ],
)
def test_values_the_engine_or_kernel_would_refuse_are_refused_here(field, value, message) -> None:
    problems = problems_of(edited(((*C0, field), value)))
    assert [p.field.split(".")[2].split("[")[0] for p in problems] == [field]
    assert message in problems[0].message


def compact(doc: object) -> bytes:
    """A document as one line of JSON (which is YAML): a 1 MiB manifest holds 65,535 ports."""
    return json.dumps(doc, separators=(",", ":")).encode()


def test_65535_ports_are_checked_for_clashes_in_linear_time() -> None:
    """Each port was compared with every earlier one: minutes for one manifest."""
    doc = minimal()
    ports = [f"{port}:80" for port in range(1, 65536)] + ["127.0.0.1:80:81"]
    doc["spec"]["containers"][0]["ports"] = ports
    (problem,) = problems_of(compact(doc))
    assert (problem.field, problem.message) == (
        "spec.containers[0].ports[65535]",
        "duplicate host port 80/tcp (also spec.containers[0].ports[79])",
    )


def test_50000_volumes_are_checked_for_clashes_in_linear_time() -> None:
    doc = minimal()
    volumes = [f"v{i}:/data/{i}" for i in range(50_000)] + ["again:/data/7"]
    doc["spec"]["containers"][0]["volumes"] = volumes
    (problem,) = problems_of(compact(doc))
    assert (problem.field, problem.message) == (
        "spec.containers[0].volumes[50000]",
        'duplicate mount target "/data/7"',
    )


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ("8080:80", "0.0.0.0:8080:81", True),
        ("127.0.0.1:8080:80", "8080:81", True),
        ("127.0.0.1:8080:80", "127.0.0.2:8080:81", False),
        ("127.0.0.1:8080:80", "127.0.0.1:8080:81", True),
        ("8080:80/udp", "8080:80", False),
    ],
)
def test_a_host_port_clashes_on_the_same_or_a_wildcard_address(first, second, clash) -> None:
    data = edited(((*C0, "ports"), [first, second]))
    if clash:
        (problem,) = problems_of(data)
        assert problem.field == "spec.containers[0].ports[1]"
    else:
        assert len(manifests.parse(data, path=PATH).containers[0].ports) == 2


def test_a_problem_echoing_a_hostile_value_is_one_escaped_bounded_line() -> None:
    data = edited(((*C0, "restart"), "\x1b[2J\nforged: every pin matches" + "x" * 5000))
    (problem,) = problems_of(data)
    line = str(problem)
    assert line.isprintable() and "\n" not in line and len(line) <= 1000
    assert "\\u001b[2J\\nforged" in line
