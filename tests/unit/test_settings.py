"""Device config (SPEC 3.1): defaults, validation messages, label files, config path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reconciler import errors, model
from reconciler.core import settings

FILE = "/etc/reconciler/config.yaml"
SOURCE = "source: {url: https://git.example.com/fleet.git}\n"
UNSIGNED = "trust: {allow_unsigned: true}\n"
MINIMAL = SOURCE + UNSIGNED
SPEC_EXAMPLE = """
device:
  name: gw-berlin-01
  labels: {site: berlin, role: gateway, ring: canary}
  labels_dir: /etc/reconciler/labels.d
source:
  url: https://git.example.com/fleet.git
  mirrors: [https://mirror-eu.example.com/fleet.git]
  branch: main
  poll_interval: 60s
  jitter: 0.1
trust:
  identities:
    - identity: https://github.com/acme/fleet/.github/workflows/release.yml@refs/heads/main
      issuer: https://token.actions.githubusercontent.com
  trusted_root: /etc/reconciler/trusted_root.json
  allow_unsigned: false
runtime:
  docker_host: unix:///var/run/docker.sock
  namespace: ""
health:
  timeout: 120s
  stable_for: 10s
  commands: []
policy:
  allowed_registries: []
  require_digest: false
  allow_privileged: false
  allow_host_network: false
  allowed_host_paths: []
state_dir: /var/lib/reconciler
metrics:
  listen: 127.0.0.1:9469
  pushgateway: ""
"""


def load(text: str, *, env: dict[str, str] | None = None, hostname: str = "gw-01"):
    return settings.load(text.encode(), file=FILE, env=env or {}, hostname=hostname)


def problems(text: str, **kwargs) -> list[str]:
    with pytest.raises(errors.SettingsError) as info:
        load(text, **kwargs)
    assert all(p.file == FILE for p in info.value.problems)
    return [f"{p.field}: {p.message}" if p.field else p.message for p in info.value.problems]


def test_minimal_config_gets_every_default():
    assert load(MINIMAL) == settings.DeviceSettings(
        device=settings.DeviceConfig(name="gw-01", labels=(), labels_dir=None),
        source=settings.SourceConfig(
            url="https://git.example.com/fleet.git",
            mirrors=(),
            branch="main",
            poll_interval=60.0,
            jitter=0.1,
        ),
        trust=settings.TrustConfig(identities=(), trusted_root=None, allow_unsigned=True),
        runtime=settings.RuntimeConfig(docker_host=None, namespace=""),
        health=settings.HealthSettings(timeout=120.0, stable_for=10.0, commands=()),
        policy=model.DevicePolicy(
            allowed_registries=(),
            require_digest=False,
            allow_privileged=False,
            allow_host_network=False,
            allowed_host_paths=(),
        ),
        state_dir="/var/lib/reconciler",
        metrics=settings.MetricsConfig(listen="127.0.0.1:9469", pushgateway=""),
    )


def test_spec_example_loads_with_every_value_as_written():
    got = load(SPEC_EXAMPLE, hostname="ignored")
    assert got.device == settings.DeviceConfig(
        name="gw-berlin-01",
        labels=(("ring", "canary"), ("role", "gateway"), ("site", "berlin")),
        labels_dir="/etc/reconciler/labels.d",
    )
    assert got.labels == {"site": "berlin", "role": "gateway", "ring": "canary"}
    assert got.source.remotes == (
        "https://git.example.com/fleet.git",
        "https://mirror-eu.example.com/fleet.git",
    )
    assert got.trust.identities == (
        settings.TrustIdentity(
            identity="https://github.com/acme/fleet/.github/workflows/release.yml@refs/heads/main",
            issuer="https://token.actions.githubusercontent.com",
        ),
    )
    assert got.trust.trusted_root == "/etc/reconciler/trusted_root.json"
    assert not got.trust.allow_unsigned
    assert got.runtime.docker_host == "unix:///var/run/docker.sock"
    assert got.metrics.address == ("127.0.0.1", 9469)


def test_settings_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load(MINIMAL).source.url = "elsewhere"  # type: ignore[misc]


def test_key_written_without_value_keeps_its_default():
    assert load(MINIMAL + "device: {name: null}\nhealth:\n").device.name == "gw-01"
    assert (
        load(SOURCE + "trust: {allow_unsigned: true, trusted_root: }\n").trust.trusted_root is None
    )


def test_hostname_is_lower_cased_when_that_makes_it_a_dns_label():
    assert load(MINIMAL, hostname="GW-Berlin-01").device.name == "gw-berlin-01"


def test_unusable_hostname_is_reported_on_device_name():
    assert problems(MINIMAL, hostname="gw_01.example.com") == [
        'device.name: not set, and the hostname cannot be used: "gw_01.example.com" is not a '
        'DNS label: lower-case letters, digits and "-", starting and ending with a letter or '
        "digit, at most 63 characters"
    ]


def test_explicit_device_name_is_not_lower_cased():
    assert problems(MINIMAL + "device: {name: GW-1}\n")[0].startswith(
        'device.name: "GW-1" is not a DNS label'
    )


def test_docker_host_defaults_to_the_docker_host_variable_then_to_none():
    assert load(MINIMAL, env={"DOCKER_HOST": "unix:///tmp/d.sock"}).runtime.docker_host == (
        "unix:///tmp/d.sock"
    )
    assert load(MINIMAL, env={"DOCKER_HOST": ""}).runtime.docker_host is None
    written = MINIMAL + "runtime: {docker_host: 'tcp://127.0.0.1:2375'}\n"
    assert load(written, env={"DOCKER_HOST": "unix:///x"}).runtime.docker_host == (
        "tcp://127.0.0.1:2375"
    )


def test_bad_docker_host_variable_is_reported_with_its_origin():
    assert problems(MINIMAL, env={"DOCKER_HOST": "ftp://x"}) == [
        'runtime.docker_host: expected unix://PATH, tcp://HOST:PORT or ssh://[USER@]HOST, got "ftp://x"'
        " (from the DOCKER_HOST variable)"
    ]


@pytest.mark.parametrize("text", ["", "{}", "# only a comment\n"])
def test_empty_config_misses_only_the_required_keys(text):
    assert problems(text) == [
        "source.url: missing required key",
        "trust.identities: at least one identity is required unless trust.allow_unsigned is true",
    ]


def test_a_top_level_that_is_not_a_mapping_is_the_only_problem():
    assert problems("[source, trust]") == ["expected a mapping of config sections, got a list"]


def test_unknown_key_at_a_nested_level_names_the_expected_keys():
    assert problems(MINIMAL.replace("}", ", pol_interval: 5s}", 1)) == [
        "source.pol_interval: unknown key; expected one of branch, jitter, kind, mirrors, "
        "poll_interval, timeout, url"
    ]


def test_source_kind_defaults_to_git_and_takes_static():
    assert load(MINIMAL).source.kind == "git"
    static = "source: {kind: static, url: https://cdn.example.com/fleet/}\n" + UNSIGNED
    assert load(static).source.kind == "static"


def test_an_unknown_source_kind_is_refused():
    bad = "source: {kind: svn, url: https://cdn.example.com/fleet/}\n" + UNSIGNED
    assert problems(bad) == ['source.kind: expected one of git, static, got string "svn"']


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.com/fleet/",
        "http://10.0.0.1:8080/tree",
        "file:///media/usb/tree",
        "/media/usb/tree",
        "relative/tree",
    ],
)
def test_a_static_source_takes_http_urls_file_urls_and_directories(url: str):
    config = f"source: {{kind: static, url: '{url}', mirrors: ['{url}']}}\n" + UNSIGNED
    assert load(config).source.remotes == (url, url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ssh://git@example.com/fleet.git", "is a ssh URL"),
        ("git://example.com/fleet.git", "is a git URL"),
        ("https://cdn.example.com/fleet/?x=1", "must not have a query"),
    ],
)
def test_a_static_source_refuses_git_only_urls(url: str, why: str):
    config = f"source: {{kind: static, url: 'https://ok.example.com/', mirrors: ['{url}']}}\n"
    found = problems(config + UNSIGNED)
    assert len(found) == 1 and found[0].startswith("source.mirrors[0]: "), found
    assert why in found[0]


def test_unknown_keys_are_rejected_at_every_level():
    text = (
        MINIMAL
        + "sourc: {}\ndevice: {nmae: x}\ntrust: {identities: [{identity: a, issuer: b, x: 1}]}\n"
    )
    text = text.replace(UNSIGNED, "")
    assert problems(text) == [
        "sourc: unknown key; expected one of device, health, maintenance, metrics, policy, "
        "runtime, source, state_dir, trust",
        "device.nmae: unknown key; expected one of labels, labels_dir, name",
        "trust.identities[0].x: unknown key; expected one of identity, issuer",
    ]


def test_all_problems_of_a_file_are_reported_at_once():
    text = """
device: {name: Gw, labels: {"-bad": x}}
source: {url: "ftp://x", poll_interval: soon, jitter: 2}
runtime: {namespace: Ns}
metrics: {listen: "localhost"}
state_dir: ""
"""
    found = problems(text)
    assert [line.split(":")[0] for line in found] == [
        "device.name",
        "device.labels.-bad",
        "source.url",
        "source.poll_interval",
        "source.jitter",
        "runtime.namespace",
        "metrics.listen",
        "trust.identities",
        "state_dir",
    ]


WRONG_TYPES = """
source: [x] => source: expected a mapping, got a list
source: {url: 5} => source.url: expected a string, got number 5
source: {url: x, branch: [main]} => source.branch: expected a string, got a list
source: {url: x, mirrors: y} => source.mirrors: expected a list, got string "y"
source: {url: x, jitter: '10%'} => source.jitter: expected a number from 0 to 1, got string "10%"
source: {url: x, jitter: true} => source.jitter: expected a number from 0 to 1, got boolean true
trust: {allow_unsigned: 'yes'} => trust.allow_unsigned: expected true or false, got string "yes"
device: {labels: [a]} => device.labels: expected a mapping of label keys to values, got a list
device: {name: 7} => device.name: expected a string, got number 7
policy: {allow_privileged: 1} => policy.allow_privileged: expected true or false, got number 1
policy: {allowed_registries: [1]} => policy.allowed_registries[0]: expected a string, got number 1
health: {commands: {a: b}} => health.commands: expected a list, got a mapping
metrics: {listen: 9469} => metrics.listen: expected a string, got number 9469
state_dir: [x] => state_dir: expected a string, got a list
"""


@pytest.mark.parametrize("case", WRONG_TYPES.strip().splitlines())
def test_wrong_types_say_what_was_expected_and_found(case):
    snippet, expected = case.split(" => ")
    text = snippet + "\n"
    text += "" if snippet.startswith("source") else SOURCE
    text += "" if snippet.startswith("trust") else UNSIGNED
    assert expected in problems(text)


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5)],
)
def test_durations_accept_unit_forms(written, seconds):
    got = load(
        MINIMAL.replace("}", f", poll_interval: {written}}}", 1)
        + f"health: {{timeout: {written}, stable_for: {written}}}\n"
    )
    assert (got.source.poll_interval, got.health.timeout, got.health.stable_for) == (seconds,) * 3


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("soon", 'expected a duration like 60s, got "soon"'),
        ("60", "expected a duration like 60s, got 60"),
        ("0s", 'must be greater than 0, got "0s"'),
        ("-5s", 'expected a duration like 60s, got "-5s"'),
    ],
)
def test_bad_poll_interval_is_explained(written, message):
    assert problems(MINIMAL.replace("}", f", poll_interval: {written}}}", 1)) == [
        f"source.poll_interval: {message}"
    ]


def test_stable_for_may_be_zero_but_timeout_may_not():
    assert load(MINIMAL + "health: {stable_for: 0s}\n").health.stable_for == 0
    assert problems(MINIMAL + "health: {timeout: 0s}\n") == [
        'health.timeout: must be greater than 0, got "0s"'
    ]


@pytest.mark.parametrize(
    ("jitter", "ok"), [("0", True), ("1", True), ("0.25", True), ("1.5", False), ("-0.1", False)]
)
def test_jitter_is_a_fraction_from_zero_to_one(jitter, ok):
    text = MINIMAL.replace("}", f", jitter: {jitter}}}", 1)
    if ok:
        assert load(text).source.jitter == float(jitter)
    else:
        assert problems(text) == [f"source.jitter: must be from 0 to 1, got {jitter}"]


def test_labels_are_sorted_pairs_and_bad_ones_are_reported_per_key():
    assert load(MINIMAL + "device: {labels: {b: '2', a: '1'}}\n").device.labels == (
        ("a", "1"),
        ("b", "2"),
    )
    assert problems(MINIMAL + "device: {labels: {'a b': x, ring: 1, ok: 'no way'}}\n") == [
        'device.labels.a b: label key "a b" is invalid: at most 63 characters of letters, '
        'digits, "-", "_", ".", starting and ending with a letter or digit',
        "device.labels.ring: label value must be a string, got int 1",
        'device.labels.ok: label value "no way" is invalid: at most 63 characters of letters, '
        'digits, "-", "_", ".", starting and ending with a letter or digit',
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/fleet.git",
        "http://127.0.0.1:8080/fleet.git",
        "ssh://git@git.example.com:2222/fleet.git",
        "git://127.0.0.1:9418/fleet.git",
        "file:///srv/git/fleet.git",
        "git@github.com:acme/fleet.git",
        "/srv/git/fleet.git",
        "../fleet",
    ],
)
def test_source_url_accepts_every_form_git_does(url):
    assert load(f"source: {{url: '{url}', mirrors: ['{url}']}}\n" + UNSIGNED).source.url == url


URL_FORMS = "(use https, http, ssh, git, file, [user@]host:path or a local path)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "must not be empty"),
        ("ftp://x/y", f'"ftp://x/y" unsupported scheme "ftp" {URL_FORMS}'),
        ("https:///fleet.git", '"https:///fleet.git" has no host name'),
        ("https://x:port/y", '"https://x:port/y" has a malformed host or port'),
        ("-uhttps://x", '"-uhttps://x" must not start with "-", which git would read as an option'),
    ],
)
def test_bad_source_urls_are_explained(url, message):
    text = f"source: {{url: 'https://ok/x', mirrors: ['https://ok/y', '{url}']}}\n" + UNSIGNED
    assert problems(text) == [f"source.mirrors[1]: {message}"]


@pytest.mark.parametrize(
    "branch", ["-x", "a..b", "a b", "release/", "x.lock", "", "a.lock/b", "@", "a~1", "x@{1}"]
)
def test_invalid_branch_names_are_rejected(branch):
    assert problems(MINIMAL.replace("}", f", branch: '{branch}'}}", 1))[0].startswith(
        "source.branch: "
    )


def test_namespace_is_empty_or_a_dns_label():
    assert load(MINIMAL + "runtime: {namespace: lab-2}\n").runtime.namespace == "lab-2"
    assert problems(MINIMAL + "runtime: {namespace: Lab_2}\n")[0].startswith(
        'runtime.namespace: must be "" or a DNS label: "Lab_2" is not a DNS label'
    )


def test_identities_are_required_unless_unsigned_is_allowed():
    assert problems(SOURCE + "trust: {identities: []}\n") == [
        "trust.identities: at least one identity is required unless trust.allow_unsigned is true"
    ]
    assert load(SOURCE + "trust: {identities: [], allow_unsigned: true}\n").trust.allow_unsigned


def test_identity_entries_need_exactly_identity_and_issuer_as_non_empty_strings():
    text = (
        SOURCE + "trust: {identities: [{identity: a}, {identity: '', issuer: b}, just-a-string]}\n"
    )
    assert problems(text) == [
        "trust.identities[0].issuer: missing required key",
        "trust.identities[1].identity: must not be empty",
        "trust.identities[2]: expected a mapping with identity and issuer, "
        'got string "just-a-string"',
    ]


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        (":9100", ("", 9100)),
        ("[::1]:1", ("::1", 1)),
        ("", None),
    ],
)
def test_metrics_listen_is_host_port_or_empty_to_disable(listen, address):
    assert load(MINIMAL + f"metrics: {{listen: '{listen}'}}\n").metrics.address == address


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:0", "127.0.0.1:65536", "::1:80", "h:x"])
def test_bad_metrics_listen_is_explained(listen):
    assert problems(MINIMAL + f"metrics: {{listen: '{listen}'}}\n") == [
        'metrics.listen: expected "host:port" with a port from 1 to 65535, or "" to disable, '
        f'got "{listen}"'
    ]


def test_policy_is_read_into_the_device_policy():
    text = MINIMAL + (
        "policy: {allowed_registries: ['127.0.0.1:5000/'], require_digest: true, "
        "allow_privileged: true, allow_host_network: true, "
        "allowed_host_paths: [/srv/, //dev/./tty]}\n"
    )
    assert load(text).policy == model.DevicePolicy(
        allowed_registries=("127.0.0.1:5000/",),
        require_digest=True,
        allow_privileged=True,
        allow_host_network=True,
        allowed_host_paths=("/srv", "/dev/tty"),
    )


def test_allowed_host_paths_must_be_absolute_without_dot_dot():
    assert problems(MINIMAL + "policy: {allowed_host_paths: [srv, /srv/../etc]}\n") == [
        'policy.allowed_host_paths[0]: expected an absolute path, got "srv"',
        'policy.allowed_host_paths[1]: must not contain ".." (a prefix check could be escaped), '
        'got "/srv/../etc"',
    ]


def test_health_commands_are_strings_split_like_a_shell_or_lists():
    text = (
        MINIMAL + "health: {commands: [\"test -f '/run/ready file'\", [systemctl, is-active, x]]}\n"
    )
    assert load(text).health.commands == (
        ("test", "-f", "/run/ready file"),
        ("systemctl", "is-active", "x"),
    )


def test_bad_health_commands_are_explained():
    text = MINIMAL + "health: {commands: ['  ', [], 'a \"b', [x, 1], 7]}\n"
    assert problems(text) == [
        "health.commands[0]: empty command; expected a program and its arguments",
        "health.commands[1]: empty command; expected a program and its arguments",
        'health.commands[2]: cannot split "a "b" into words: No closing quotation',
        "health.commands[3][1]: expected a string, got number 1",
        "health.commands[4]: expected a command string or a list of strings, got number 7",
    ]


def test_yaml_problems_become_settings_errors():
    assert problems("source: {url: x\n")[0].startswith("invalid YAML: ")
    assert problems("source: {}\nsource: {}\n")[0].startswith("duplicate key 'source'")


def test_with_labels_replaces_the_labels():
    merged = load(MINIMAL).with_labels({"z": "1", "a": "2"})
    assert merged.device.labels == (("a", "2"), ("z", "1"))


def test_label_files_merge_over_the_base_in_order():
    files = [
        ("10-site.yaml", b"site: berlin\nring: canary\n"),
        ("20-ring.yaml", b"ring: prod\n"),
        ("30-empty.yaml", b""),
    ]
    assert settings.merge_label_files({"role": "gw", "ring": "dev"}, files) == {
        "role": "gw",
        "site": "berlin",
        "ring": "prod",
    }


def test_label_file_problems_name_each_file_and_are_all_reported():
    files = [
        ("a.yaml", b"ok: x\n'bad key': y\n"),
        ("b.yaml", b"- not a mapping\n"),
        ("c.yaml", b"k: [1\n"),
        ("d.yaml", b"n: 5\n"),
    ]
    with pytest.raises(errors.SettingsError) as info:
        settings.merge_label_files({}, files)
    found = [(p.file, p.field, p.message.split(":")[0]) for p in info.value.problems]
    assert found == [
        ("a.yaml", "bad key", 'label key "bad key" is invalid'),
        ("b.yaml", "", "expected a mapping of label keys to values, got a list"),
        ("c.yaml", "", "invalid YAML"),
        ("d.yaml", "n", "label value must be a string, got int 5"),
    ]


def test_config_path_prefers_cli_then_environment_then_default():
    env = {"RECONCILER_CONFIG": "/env.yaml"}
    assert settings.config_path("/cli.yaml", env) == "/cli.yaml"
    assert settings.config_path(None, env) == "/env.yaml"
    assert settings.config_path(None, {}) == settings.DEFAULT_CONFIG_PATH == FILE


def test_read_loads_the_file_and_names_it_in_problems(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    assert settings.read(str(path), env={}, hostname="gw-01").source.url.startswith("https://")
    path.write_text("source: {}\n")
    with pytest.raises(errors.SettingsError) as info:
        settings.read(str(path), env={}, hostname="gw-01")
    assert info.value.problems[0].file == str(path)


@pytest.mark.parametrize(
    ("name", "reason"), [("missing.yaml", "No such file or directory"), (".", "Is a directory")]
)
def test_unreadable_config_names_the_path_and_the_reason(tmp_path: Path, name, reason):
    path = str(tmp_path / name)
    with pytest.raises(errors.SettingsError) as info:
        settings.read(path, env={}, hostname="gw-01")
    assert str(info.value) == f"{path}: cannot read the config: {reason}"


def test_oversized_config_is_rejected_without_reading_it_all(tmp_path: Path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (3 * 1024 * 1024))
    with pytest.raises(errors.SettingsError, match="over the limit"):
        settings.read(str(path), env={}, hostname="gw-01")


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/pwned", "fd::17"])
def test_a_git_remote_helper_url_is_refused(url):
    with pytest.raises(errors.SettingsError) as caught:
        settings.load(
            f"source:\n  url: '{url}'\ntrust:\n  allow_unsigned: true\n".encode(),
            file="c.yaml",
            env={},
            hostname="dev",
        )
    assert "source.url" in str(caught.value)
    assert "remote helpers" in str(caught.value)


def test_a_bad_url_message_never_shows_its_credentials():
    with pytest.raises(errors.SettingsError) as caught:
        settings.load(
            b"source:\n  url: 'https://bob:s3cret@/nohost'\ntrust:\n  allow_unsigned: true\n",
            file="c.yaml",
            env={},
            hostname="dev",
        )
    assert "s3cret" not in str(caught.value)
    assert "***@" in str(caught.value)


def test_network_deadlines_default_to_60s_and_120s_and_are_bounded():
    loaded = load(MINIMAL)
    assert (loaded.source.timeout, loaded.runtime.pull_stall_timeout) == (60.0, 120.0)
    text = MINIMAL.replace("}", ", timeout: 5s}", 1) + "runtime: {pull_stall_timeout: 500ms}\n"
    loaded = load(text)
    assert (loaded.source.timeout, loaded.runtime.pull_stall_timeout) == (5.0, 0.5)
    text = MINIMAL.replace("}", ", timeout: 0s}", 1) + "runtime: {pull_stall_timeout: 2h}\n"
    assert problems(text) == [
        'source.timeout: must be greater than 0, got "0s"',
        'runtime.pull_stall_timeout: must be at most 1h, got "2h"',
    ]


@pytest.mark.parametrize(
    "branch", ["main", "release/1.4", "a.lock/b", "@", "a..b", "x.lock", "-x", "a b", "é/ü", "a@b"]
)
def test_config_and_the_git_adapter_judge_a_branch_alike(branch):
    """One rule: what the config accepts the adapter accepts, and what it refuses it refuses."""
    from reconciler.adapters import git_source

    text = MINIMAL.replace("}", f", branch: '{branch}'}}", 1)
    try:
        config_refuses = load(text).source.branch != branch
    except errors.SettingsError as exc:
        config_refuses = any(p.field == "source.branch" for p in exc.problems)
    assert config_refuses == (git_source.branch_problem(branch) is not None)


def test_a_docker_host_with_credentials_is_never_echoed():
    found = problems(MINIMAL + "runtime: {docker_host: 'ftp://admin:TOKEN@host'}\n")
    assert found == [
        "runtime.docker_host: expected unix://PATH, tcp://HOST:PORT or ssh://[USER@]HOST, "
        'got "ftp://***@host"'
    ]
    from_env = problems(MINIMAL, env={"DOCKER_HOST": "ftp://admin:TOKEN@host"})
    assert "TOKEN" not in "".join(from_env)


def test_a_poll_interval_no_sleep_can_take_is_refused():
    found = problems(MINIMAL.replace("}", ", poll_interval: 999999999999d}", 1))
    assert found == [
        'source.poll_interval: "999999999999d" is longer than the maximum of 100 years'
    ]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("runtime", "docker_host", "unix:///run/d\\0ocker.sock"),
        ("", "state_dir", "/var/lib/re\\0conciler"),
        ("health", "commands", '[[/bin/check, "a\\0b"]]'),
        ("policy", "allowed_host_paths", '["/srv\\0"]'),
    ],
)
def test_a_nul_byte_in_a_path_or_argument_is_refused(section, key, value):
    quoted = value if value.startswith("[") else f'"{value}"'
    written = f"{section}: {{{key}: {quoted}}}\n" if section else f"{key}: {quoted}\n"
    found = problems(MINIMAL + written)
    assert len(found) == 1
    assert found[0].endswith("must not contain a NUL byte")


def test_a_health_command_string_is_bounded_before_it_is_split():
    found = problems(MINIMAL + f"health: {{commands: ['{'x' * 5000}']}}\n")
    assert found == ["health.commands[0]: longer than 4096 characters; write it as a list"]
