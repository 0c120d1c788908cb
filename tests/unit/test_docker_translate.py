"""The pure spec -> Docker API translation, list/inspect parsing and the env_file format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import errors, model
from reconciler.adapters import docker_translate as tr


def desired(spec: model.ContainerSpec, *, app: str = "gw") -> model.DesiredContainer:
    return model.DesiredContainer(
        app=app,
        revision="r" * 64,
        spec=spec,
        spec_digest=model.spec_digest(spec, namespace="ns"),
    )


FULL = model.ContainerSpec(
    name="web",
    image="127.0.0.1:5000/gw:1.4.2",
    command=("httpd", "-f", "-p", "80"),
    entrypoint=("/bin/sh", "-c"),
    working_dir="/www",
    user="1000:1000",
    env=(("LOG_LEVEL", "info"), ("MODE", "manifest")),
    env_file="/etc/reconciler/secrets/gw.env",
    ports=(
        model.PortMapping(8080, 80),
        model.PortMapping(9000, 9000, "udp", "127.0.0.1"),
        model.PortMapping(8081, 80),
    ),
    volumes=(
        model.VolumeMount("gw-data", "/data"),
        model.VolumeMount("/srv/gw", "/config", read_only=True),
    ),
    devices=(model.DeviceMapping("/dev/ttyUSB0", "/dev/ttyS0", "rw"),),
    restart="on-failure",
    memory=128 * 1024 * 1024,
    cpus=0.5,
)


def summary(labels: dict[str, str], **fields: object) -> dict[str, object]:
    return {"Id": "c" * 64, "Names": ["/x"], "Image": "img:1", "Labels": labels, **fields}


def our_labels(namespace: str = "ns") -> dict[str, str]:
    return {
        model.LABEL_APP: "gw",
        model.LABEL_CONTAINER: "web",
        model.LABEL_REVISION: "rev",
        model.LABEL_NAMESPACE: namespace,
        model.LABEL_SPEC_DIGEST: "dig",
    }


def test_names_use_the_namespace_or_reconciler_and_underscores():
    assert tr.container_name("", "gw", "web") == "reconciler_gw_web"
    assert tr.container_name("lab", "gw", "web") == "lab_gw_web"
    assert tr.network_name("", "gw") == "reconciler_gw"
    assert tr.temporary_name("lab", "gw", "web", "abcdef0123456789") == "lab_gw_web_abcdef012345"


def test_named_volumes_keep_their_name_unless_namespaced():
    assert tr.volume_name("", "gw-data") == "gw-data"
    assert tr.volume_name("lab", "gw-data") == "lab_gw-data"


def test_every_option_of_a_container_spec_is_translated():
    d = desired(FULL)
    args = tr.create_args(d, namespace="ns", name="ns_gw_web", env_file_values={"SECRET": "s"})
    assert args.container == {
        "image": "127.0.0.1:5000/gw:1.4.2",
        "name": "ns_gw_web",
        "labels": {
            "reconciler.app": "gw",
            "reconciler.container": "web",
            "reconciler.revision": "r" * 64,
            "reconciler.namespace": "ns",
            "reconciler.spec-digest": d.spec_digest,
        },
        "environment": ["LOG_LEVEL=info", "MODE=manifest", "SECRET=s"],
        "detach": True,
        "command": ["httpd", "-f", "-p", "80"],
        "entrypoint": ["/bin/sh", "-c"],
        "user": "1000:1000",
        "working_dir": "/www",
        "ports": [(80, "tcp"), (9000, "udp")],
    }
    assert args.host_config == {
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 0},
        "network_mode": "ns_gw",
        "port_bindings": {"80/tcp": [("", 8080), ("", 8081)], "9000/udp": [("127.0.0.1", 9000)]},
        "binds": ["ns_gw-data:/data:rw", "/srv/gw:/config:ro"],
        "devices": ["/dev/ttyUSB0:/dev/ttyS0:rw"],
        "mem_limit": 128 * 1024 * 1024,
        "nano_cpus": 500_000_000,
    }
    assert args.network == "ns_gw"
    assert args.aliases == ("web",)
    assert args.volumes == ("ns_gw-data",)


def test_a_minimal_spec_sets_only_the_image_labels_restart_and_network():
    spec = model.ContainerSpec(name="web", image="busybox:1")
    args = tr.create_args(desired(spec), namespace="", name="reconciler_gw_web")
    assert set(args.container) == {"image", "name", "labels", "environment", "detach"}
    assert args.container["environment"] == []
    assert args.host_config == {
        "restart_policy": {"Name": "unless-stopped"},
        "network_mode": "reconciler_gw",
    }
    assert args.volumes == ()


def test_host_network_gets_no_app_network_alias_or_published_ports():
    spec = model.ContainerSpec(
        name="web", image="busybox:1", network_mode="host", ports=(model.PortMapping(80, 80),)
    )
    args = tr.create_args(desired(spec), namespace="", name="n")
    assert args.network is None
    assert args.aliases == ()
    assert args.host_config["network_mode"] == "host"
    assert "port_bindings" not in args.host_config
    assert "ports" not in args.container


def test_privileged_is_passed_only_when_asked():
    spec = model.ContainerSpec(name="web", image="busybox:1", privileged=True)
    assert tr.create_args(desired(spec), namespace="", name="n").host_config["privileged"] is True


def test_explicit_env_wins_over_the_env_file():
    spec = model.ContainerSpec(name="web", image="i", env=(("A", "manifest"),))
    assert tr.environment(spec, {"A": "file", "B": "file"}) == ["A=manifest", "B=file"]


def test_a_container_missing_any_of_our_labels_is_not_ours():
    for missing in tr.OUR_LABELS:
        labels = our_labels()
        del labels[missing]
        assert tr.observed(summary(labels, State="running"), namespace="ns") is None
    assert tr.observed(summary(our_labels("other"), State="running"), namespace="ns") is None
    assert tr.observed(summary({}, State="running"), namespace="ns") is None


def test_a_list_entry_of_ours_becomes_an_observed_container():
    found = tr.observed(summary(our_labels(), State="running", Status="Up 3s"), namespace="ns")
    assert found == model.ObservedContainer(
        id="c" * 64,
        name="x",
        app="gw",
        container="web",
        revision="rev",
        namespace="ns",
        spec_digest="dig",
        image="img:1",
        status="running",
        labels=tuple(sorted(our_labels().items())),
    )


def test_only_containers_that_are_not_running_need_an_inspect():
    assert not tr.needs_inspect({"State": "running"})
    assert tr.needs_inspect({"State": "exited"})
    assert tr.needs_inspect({"State": "restarting"})


def test_inspect_gives_restart_count_and_exit_code_of_a_stopped_container():
    entry = summary(our_labels(), State="exited", Status="Exited (3) 2 seconds ago")
    assert tr.observed(entry, namespace="ns").exit_code == 3
    inspect = {"State": {"Status": "exited", "ExitCode": 7}, "RestartCount": 4}
    found = tr.observed(entry, namespace="ns", inspect=inspect)
    assert (found.status, found.exit_code, found.restart_count) == ("exited", 7, 4)


def test_health_info_reads_state_health_and_restarts():
    inspect = {
        "State": {"Status": "running", "ExitCode": 0, "Health": {"Status": "healthy"}},
        "RestartCount": 2,
    }
    assert tr.health_info(inspect) == ("running", "healthy", 2, 0)
    assert tr.health_info({"State": {"Status": "exited", "ExitCode": 1}}).health is None


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("127.0.0.1:5000/gw", ("127.0.0.1:5000/gw", "latest")),
        ("127.0.0.1:5000/gw:1.4.2", ("127.0.0.1:5000/gw", "1.4.2")),
        ("127.0.0.1:5000/gw@sha256:" + "a" * 64, ("127.0.0.1:5000/gw", "sha256:" + "a" * 64)),
    ],
)
def test_image_refs_split_into_repository_and_tag_or_digest(ref, expected):
    assert tr.split_image_ref(ref) == expected


def test_env_file_skips_comments_and_blank_lines_and_keeps_values_literal():
    data = b'# secrets\n\n  TOKEN=abc=def\r\nQUOTED="x y"\nEMPTY=\n   # indented comment\nTOKEN=2\n'
    assert tr.parse_env_file(data, file="/s.env") == {
        "TOKEN": "2",
        "QUOTED": '"x y"',
        "EMPTY": "",
    }


def test_env_file_reports_every_bad_line_without_showing_values():
    data = b"GOOD=1\nhunter2\n=nokey\nBAD KEY=v\nNUL=a\0b\n"
    with pytest.raises(errors.ProblemsError) as caught:
        tr.parse_env_file(data, file="/etc/reconciler/secrets/gw.env")
    messages = [str(p) for p in caught.value.problems]
    assert [p.field for p in caught.value.problems] == ["line 2", "line 3", "line 4", "line 5"]
    assert messages[0] == (
        '/etc/reconciler/secrets/gw.env: line 2: expected KEY=VALUE, found no "="'
    )
    assert not any("hunter2" in m for m in messages)


def test_env_file_that_is_not_utf8_is_rejected_with_its_name():
    with pytest.raises(errors.ProblemsError, match=r"/s\.env: not UTF-8"):
        tr.parse_env_file(b"A=\xff\n", file="/s.env")


def test_reading_a_missing_env_file_names_the_file(tmp_path):
    path = str(tmp_path / "missing.env")
    with pytest.raises(errors.ProblemsError, match=r"missing\.env: cannot read the env file"):
        tr.read_env_file(path)


def test_reading_an_env_file_from_disk(tmp_path):
    path = tmp_path / "gw.env"
    path.write_bytes(b"A=1\n")
    assert tr.read_env_file(str(path)) == {"A": "1"}


def test_an_oversized_env_file_is_not_read_into_memory(tmp_path):
    path = tmp_path / "big.env"
    path.write_bytes(b"A=" + b"x" * tr.MAX_ENV_FILE_BYTES)
    with pytest.raises(errors.ProblemsError, match="larger than"):
        tr.read_env_file(str(path))


keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0"), max_size=30
)


@given(st.dictionaries(keys, values, max_size=10))
def test_env_file_round_trips_any_key_value_mapping(mapping):
    data = "".join(f"{k}={v}\n" for k, v in mapping.items()).encode()
    assert tr.parse_env_file(data, file="f") == mapping


def test_ip_addresses_lists_every_network_address_and_skips_empty_ones():
    inspect = {
        "NetworkSettings": {
            "Networks": {
                "reconciler_gw": {"IPAddress": "172.18.0.2", "GlobalIPv6Address": ""},
                "other": {"IPAddress": "", "GlobalIPv6Address": "fd00::2"},
            }
        }
    }
    assert tr.ip_addresses(inspect) == ["172.18.0.2", "fd00::2"]
    assert tr.ip_addresses({}) == []
    assert tr.ip_addresses({"NetworkSettings": {"Networks": None}}) == []
