"""policy: every rule of SPEC 3.1 `policy`, the registry and host-path comparisons, traversal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler import errors, model
from reconciler.core import policy

DIGEST = "sha256:" + "ab" * 32
PATH = "apps/gw/app.yaml"
OPEN = model.DevicePolicy(allowed_host_paths=("/",))  # permissive except where a test narrows it


def container(**fields) -> model.ContainerSpec:
    return model.ContainerSpec(**{"name": "web", "image": "127.0.0.1:5000/gw:1.4.2", **fields})


def app(*containers: model.ContainerSpec) -> model.AppManifest:
    return model.AppManifest(
        name="gw",
        path=PATH,
        revision="0" * 64,
        selector=model.Selector(),
        containers=containers or (container(),),
    )


def check_one(spec: model.ContainerSpec, device_policy: model.DevicePolicy) -> list[errors.Problem]:
    return policy.check(app(spec), device_policy)


# --- registries


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("nginx:1.25", "docker.io/library/nginx"),
        ("docker.io/nginx", "docker.io/library/nginx"),
        ("index.docker.io/library/nginx:1", "docker.io/library/nginx"),
        ("acme/app:1", "docker.io/acme/app"),
        ("acme/team/app", "docker.io/acme/team/app"),
        ("ghcr/acme/app", "docker.io/ghcr/acme/app"),  # no dot, colon or localhost: a namespace
        ("localhost/app:1", "localhost/app"),
        ("Registry/app", "Registry/app"),  # upper case can only be a host
        ("127.0.0.1:5000/gw:1.4.2", "127.0.0.1:5000/gw"),
        ("127.0.0.1:5000/gw", "127.0.0.1:5000/gw"),
        (f"127.0.0.1:5000/gw@{DIGEST}", "127.0.0.1:5000/gw"),
        (f"127.0.0.1:5000/gw:1.4.2@{DIGEST}", "127.0.0.1:5000/gw"),
        (f"nginx@{DIGEST}", "docker.io/library/nginx"),
        ("ghcr.io/acme/app:1", "ghcr.io/acme/app"),
    ],
)
def test_image_repository_qualifies_references_as_docker_does(image, repository):
    assert policy.image_repository(image) == repository


REGISTRY_CASES = [
    ("any registry is allowed when the list is empty", "evil.example/x:1", (), True),
    ("a registry with a port allows it", "127.0.0.1:5000/gw:1.4.2", ("127.0.0.1:5000",), True),
    ("a registry allows digest refs", f"127.0.0.1:5000/gw@{DIGEST}", ("127.0.0.1:5000",), True),
    ("a port prefix is not a port", "127.0.0.1:50000/gw:1", ("127.0.0.1:5000",), False),
    ("a host does not allow the same host on a port", "127.0.0.1:5000/gw:1", ("127.0.0.1",), False),
    ("docker.io allows an image with no registry part", "nginx:1.25", ("docker.io",), True),
    ("index.docker.io is docker.io", "nginx:1.25", ("index.docker.io",), True),
    ("docker.io/library allows official images", "nginx", ("docker.io/library",), True),
    ("docker.io/library allows docker.io/nginx", "docker.io/nginx", ("docker.io/library",), True),
    ("docker.io/library refuses other namespaces", "acme/app:1", ("docker.io/library",), False),
    ("a Docker Hub namespace allows its images", "acme/app:1", ("docker.io/acme",), True),
    ("an image with no registry part is not on ghcr.io", "nginx:1.25", ("ghcr.io",), False),
    ("a namespace entry allows images below it", "ghcr.io/acme/app:1", ("ghcr.io/acme",), True),
    ("a trailing slash changes nothing", "ghcr.io/acme/app:1", ("ghcr.io/acme/",), True),
    ("prefixes compare whole components", "ghcr.io/acme-evil/app:1", ("ghcr.io/acme",), False),
    ("a longer host is another host", "ghcr.io.evil.example/acme/app", ("ghcr.io",), False),
    ("a dotless first component is a Hub namespace", "ghcr/acme/app", ("ghcr",), False),
    ("a repository entry allows its tags", "ghcr.io/acme/app:1", ("ghcr.io/acme/app",), True),
    ("localhost is a registry", "localhost/app:1", ("localhost",), True),
    ("localhost with a port is a registry", "localhost:5000/app", ("localhost:5000",), True),
    ("any entry of the list will do", "ghcr.io/acme/app:1", ("quay.io", "ghcr.io"), True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("image", "allowed", "ok"), [c[1:] for c in REGISTRY_CASES], ids=[c[0] for c in REGISTRY_CASES]
)
def test_allowed_registries(image, allowed, ok):
    problems = check_one(container(image=image), replace(OPEN, allowed_registries=allowed))
    if ok:
        assert problems == []
    else:
        assert [(p.file, p.field) for p in problems] == [(PATH, "spec.containers[0].image")]


def test_a_registry_problem_names_the_image_its_registry_and_the_list():
    problems = check_one(
        container(image="nginx:1.25"),
        replace(OPEN, allowed_registries=("127.0.0.1:5000", "ghcr.io/acme")),
    )
    assert [str(p) for p in problems] == [
        'apps/gw/app.yaml: spec.containers[0].image: image "nginx:1.25" '
        "(docker.io/library/nginx) is not from an allowed registry: "
        "policy.allowed_registries is (127.0.0.1:5000, ghcr.io/acme)"
    ]


# --- digests


@pytest.mark.parametrize(
    ("image", "require", "ok"),
    [
        ("127.0.0.1:5000/gw:1.4.2", False, True),
        ("127.0.0.1:5000/gw:1.4.2", True, False),
        ("127.0.0.1:5000/gw", True, False),
        (f"127.0.0.1:5000/gw@{DIGEST}", True, True),
        (f"127.0.0.1:5000/gw:1.4.2@{DIGEST}", True, True),
        ("127.0.0.1:5000/gw@sha512:" + "ab" * 64, True, False),
    ],
    ids=[
        "a tag is fine when digests are not required",
        "a tag is refused when digests are required",
        "no tag at all is refused when digests are required",
        "a digest satisfies require_digest",
        "a tag plus a digest satisfies require_digest",
        "only a sha256 digest counts",
    ],
)
def test_require_digest(image, require, ok):
    problems = check_one(container(image=image), replace(OPEN, require_digest=require))
    assert problems == (
        []
        if ok
        else [
            errors.Problem(
                PATH,
                "spec.containers[0].image",
                f'image "{image}" is not pinned by digest (@sha256:...) '
                "and policy.require_digest is true",
            )
        ]
    )


# --- privileged and host network


@pytest.mark.parametrize(
    ("privileged", "allowed", "ok"),
    [(False, False, True), (True, False, False), (True, True, True), (False, True, True)],
    ids=[
        "unprivileged needs nothing",
        "privileged is refused by default",
        "privileged is allowed by allow_privileged",
        "allow_privileged does not require privileged",
    ],
)
def test_privileged_needs_allow_privileged(privileged, allowed, ok):
    problems = check_one(container(privileged=privileged), replace(OPEN, allow_privileged=allowed))
    assert [str(p) for p in problems] == (
        []
        if ok
        else [
            "apps/gw/app.yaml: spec.containers[0].privileged: privileged containers are not "
            "allowed: policy.allow_privileged is false"
        ]
    )


@pytest.mark.parametrize(
    ("mode", "allowed", "ok"),
    [("bridge", False, True), ("host", False, False), ("host", True, True)],
    ids=[
        "the app network needs nothing",
        "host network is refused by default",
        "host network is allowed by allow_host_network",
    ],
)
def test_host_network_needs_allow_host_network(mode, allowed, ok):
    problems = check_one(container(network_mode=mode), replace(OPEN, allow_host_network=allowed))
    assert [str(p) for p in problems] == (
        []
        if ok
        else [
            "apps/gw/app.yaml: spec.containers[0].network_mode: host networking is not "
            "allowed: policy.allow_host_network is false"
        ]
    )


# --- host paths, for bind mounts and devices alike

HOST_PATH_CASES = [
    ("a path below an allowed path", "/srv/gw", ("/srv",), True),
    ("the allowed path itself", "/srv", ("/srv",), True),
    ("a sibling sharing a prefix is not below", "/srvx", ("/srv",), False),
    ("a child of a prefix-sharing sibling is not below", "/srvx/gw", ("/srv",), False),
    ("dot-dot out of an allowed path", "/srv/../etc", ("/srv",), False),
    ("dot-dot twice out of an allowed path", "/srv/gw/../../etc/shadow", ("/srv",), False),
    ("dot-dot that stays inside", "/srv/gw/../data", ("/srv",), True),
    ("dot components are ignored", "/srv/./gw/.", ("/srv",), True),
    ("repeated and trailing slashes are ignored", "//srv//gw/", ("/srv",), True),
    ("dot-dot at the root stays at the root", "/../srv/gw", ("/srv",), True),
    ("dot-dot at the root cannot reach outside", "/../../etc", ("/srv",), False),
    ("the root is not below /srv", "/", ("/srv",), False),
    ("an allowed root allows everything", "/etc/shadow", ("/",), True),
    ("a trailing slash on an allowed path", "/srv/gw", ("/srv/",), True),
    ("an allowed path is normalised too", "/srv/gw", ("/srv/gw/../",), True),
    ("a relative allowed path allows nothing", "/srv/gw", ("srv",), False),
    ("any allowed path will do", "/dev/ttyUSB0", ("/srv", "/dev/ttyUSB0"), True),
    ("a device next to an allowed device", "/dev/ttyUSB1", ("/srv", "/dev/ttyUSB0"), False),
    ("dot-dot out of an allowed device", "/dev/ttyUSB0/../sda", ("/dev/ttyUSB0",), False),
    ("empty allowed_host_paths allows no host path", "/srv/gw", (), False),
    ("names compare exactly, case included", "/SRV/gw", ("/srv",), False),
]  # fmt: skip


def _with_host_path(kind: str, path: str) -> model.ContainerSpec:
    if kind == "volume":
        return container(volumes=(model.VolumeMount(source=path, target="/config"),))
    return container(devices=(model.DeviceMapping(host_path=path, container_path="/dev/tty0"),))


@pytest.mark.parametrize("kind", ["volume", "device"])
@pytest.mark.parametrize(
    ("path", "allowed", "ok"), [c[1:] for c in HOST_PATH_CASES], ids=[c[0] for c in HOST_PATH_CASES]
)
def test_allowed_host_paths(kind, path, allowed, ok):
    spec = _with_host_path(kind, path)
    problems = check_one(spec, model.DevicePolicy(allowed_host_paths=allowed))
    field = "volumes[0]" if kind == "volume" else "devices[0]"
    if ok:
        assert problems == []
    else:
        assert [(p.file, p.field) for p in problems] == [(PATH, f"spec.containers[0].{field}")]


def test_a_host_path_problem_names_the_path_and_the_allowed_list():
    spec = container(volumes=(model.VolumeMount(source="/etc", target="/config"),))
    problems = check_one(spec, model.DevicePolicy(allowed_host_paths=("/srv", "/dev/ttyUSB0")))
    assert [str(p) for p in problems] == [
        "apps/gw/app.yaml: spec.containers[0].volumes[0]: host path /etc is outside "
        "policy.allowed_host_paths (/srv, /dev/ttyUSB0)"
    ]


def test_a_traversal_problem_shows_where_the_path_really_goes():
    spec = container(volumes=(model.VolumeMount(source="/srv/../etc", target="/config"),))
    problems = check_one(spec, model.DevicePolicy(allowed_host_paths=("/srv",)))
    assert [p.message for p in problems] == [
        "host path /srv/../etc (= /etc) is outside policy.allowed_host_paths (/srv)"
    ]


def test_with_no_allowed_host_paths_the_message_says_none_are_allowed():
    spec = container(devices=(model.DeviceMapping(host_path="/dev/ttyUSB0", container_path="/d"),))
    assert [p.message for p in check_one(spec, model.DevicePolicy())] == [
        "host path /dev/ttyUSB0 is not allowed: policy.allowed_host_paths is empty"
    ]


def test_a_relative_device_path_is_refused():
    spec = container(devices=(model.DeviceMapping(host_path="dev/ttyUSB0", container_path="/d"),))
    assert [p.message for p in check_one(spec, OPEN)] == [
        "host path dev/ttyUSB0 is not an absolute path"
    ]


def test_named_volumes_are_not_host_paths():
    spec = container(volumes=(model.VolumeMount(source="gw-data", target="/data"),))
    assert check_one(spec, model.DevicePolicy()) == []


# --- the whole app


def test_the_default_policy_allows_a_plain_app():
    spec = container(volumes=(model.VolumeMount(source="gw-data", target="/data"),))
    assert check_one(spec, model.DevicePolicy()) == []


def test_every_problem_of_every_container_is_reported_in_manifest_order():
    first = container(
        name="web",
        image="nginx:1.25",
        privileged=True,
        volumes=(
            model.VolumeMount(source="gw-data", target="/data"),
            model.VolumeMount(source="/srv/gw", target="/config", read_only=True),
            model.VolumeMount(source="/srv/../etc", target="/host-etc"),
        ),
    )
    second = container(
        name="agent",
        network_mode="host",
        devices=(
            model.DeviceMapping(host_path="/dev/ttyUSB0", container_path="/dev/ttyUSB0"),
            model.DeviceMapping(host_path="/dev/mem", container_path="/dev/mem"),
        ),
    )
    strict = model.DevicePolicy(
        allowed_registries=("127.0.0.1:5000",),
        require_digest=True,
        allowed_host_paths=("/srv", "/dev/ttyUSB0"),
    )
    problems = policy.check(app(first, second), strict)
    assert {p.file for p in problems} == {PATH}
    assert [p.field for p in problems] == [
        "spec.containers[0].image",  # registry
        "spec.containers[0].image",  # digest
        "spec.containers[0].privileged",
        "spec.containers[0].volumes[2]",
        "spec.containers[1].image",  # digest
        "spec.containers[1].network_mode",
        "spec.containers[1].devices[1]",
    ]


# --- env_file (read on the device by the reconciler, so it is a host path too)


@pytest.mark.parametrize(
    ("path", "allowed", "ok"),
    [
        ("/etc/reconciler/secrets/gw.env", (), True),
        ("/etc/reconciler/secrets/../../shadow", (), False),
        ("/etc/shadow", (), False),
        ("/srv/gw/app.env", ("/srv",), True),
        ("/srvx/app.env", ("/srv",), False),
    ],
)
def test_env_file_must_be_in_the_secrets_dir_or_an_allowed_host_path(path, allowed, ok):
    problems = check_one(container(env_file=path), model.DevicePolicy(allowed_host_paths=allowed))
    assert (problems == []) is ok
    if not ok:
        assert problems[0].field == "spec.containers[0].env_file"
        assert problems[0].message.startswith(f"env_file {path}")
        assert "/etc/reconciler/secrets" in problems[0].message
