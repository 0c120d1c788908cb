"""Device config (SPEC 3.1): `config.yaml` bytes + environment + hostname -> DeviceSettings.

Owns the config schema: its keys, defaults, units and validation. Every problem of a file is
reported at once in one SettingsError (the CLI exits 2), each naming the file and the dotted key.
Pure except `read`, which only reads the config file; it must not watch files, list
`device.labels_dir` (the daemon does, and hands the bytes to `merge_label_files`) or touch the
engine, Git or the network.
A key written with no value (`name:`, i.e. null) counts as absent, so its default applies.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import errors, model, text
from reconciler.core import _checks, labels, maintenance, safe_yaml, urls

DEFAULT_CONFIG_PATH = "/etc/reconciler/config.yaml"
CONFIG_ENV = "RECONCILER_CONFIG"
DEFAULT_STATE_DIR = "/var/lib/reconciler"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9469"
SOURCE_KINDS = ("git", "static")  # source.kind: a Git remote, or a tree `publish` wrote
_MAX_COMMAND_TEXT = 4096  # a health command written as one string

_DOCKER_SCHEMES = ("http", "https", "npipe", "ssh", "tcp", "unix")
_MAX_NETWORK_TIMEOUT = 3600.0  # source.timeout, runtime.pull_stall_timeout
# host may be empty (every address) or a bracketed IPv6 address.
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class DeviceConfig:
    """`device`: who this device is.

    `name`: a DNS label; default the hostname (lower-cased). Seeds rollout buckets.
    `labels`: sorted (key, value) pairs that app selectors match; default none.
    `labels_dir`: directory whose `*.yaml` label files are merged over `labels`; default None.
    """

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    labels_dir: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    """`source`: where the fleet repo is.

    `kind`: `git` (default: a Git remote) or `static` (a tree written by `reconciler publish`).
    `url`: required; git: https/http/ssh/git/file URL, `[user@]host:path` or a local path;
    static: https/http base URL, file URL or a local directory.
    `mirrors`: same kind, tried in order when `url` fails; default none. `branch`: default
    `main` (git only).
    `poll_interval`: seconds, > 0; default 60. `jitter`: fraction of the interval in [0, 1]
    added at random so a fleet does not poll in step; default 0.1.
    `timeout`: seconds one network call (Git: a ref query or fetch; static: one file) may take
    before it is abandoned and the next remote is tried; default 60.
    """

    url: str
    kind: str = "git"
    mirrors: tuple[str, ...] = ()
    branch: str = "main"
    poll_interval: float = 60.0
    jitter: float = 0.1
    timeout: float = 60.0

    @property
    def remotes(self) -> tuple[str, ...]:
        """The url, then the mirrors: the order fetches try them in."""
        return (self.url, *self.mirrors)


@dataclass(frozen=True)
class TrustIdentity:
    """One signer allowed to release: certificate identity (SAN) and OIDC issuer, both exact."""

    identity: str
    issuer: str


@dataclass(frozen=True)
class TrustConfig:
    """`trust`: who may sign releases.

    `identities`: any one may sign; required (non-empty) unless `allow_unsigned`.
    `trusted_root`: path of a sigstore trusted_root.json; default None = the public Sigstore root.
    `allow_unsigned`: default False; True skips verification (labs only, warned every cycle).
    """

    identities: tuple[TrustIdentity, ...] = ()
    trusted_root: str | None = None
    allow_unsigned: bool = False


@dataclass(frozen=True)
class RuntimeConfig:
    """`runtime`: the container engine.

    `docker_host`: engine address; default the DOCKER_HOST environment variable, else None,
    meaning the engine's default socket. `namespace`: "" (default) or a DNS label, set to share
    one engine between several reconcilers. `pull_stall_timeout`: seconds an image pull may go
    without progress before it is aborted (a registry stalling mid-blob); default 120.
    """

    docker_host: str | None = None
    namespace: str = ""
    pull_stall_timeout: float = 120.0


@dataclass(frozen=True)
class HealthSettings:
    """`health`: when a changed app counts as healthy.

    `timeout`: seconds the changed apps have to pass their checks; default 120.
    `stable_for`: seconds they must then keep running without restarts; default 10.
    `commands`: host-side checks as argv tuples, exit 0 = healthy; default none. Written as a
    string (split like a shell would, no shell runs it) or as a list of strings.
    """

    timeout: float = 120.0
    stable_for: float = 10.0
    commands: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    """`metrics`: Prometheus exposition.

    `listen`: `host:port` (host may be empty = every address, or `[v6]`); default
    `127.0.0.1:9469`; "" disables. `pushgateway`: optional push target; default "" = none.
    """

    listen: str = DEFAULT_METRICS_LISTEN
    pushgateway: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to serve on, or None when disabled."""
        return _split_listen(self.listen) if self.listen else None


@dataclass(frozen=True)
class MaintenanceConfig:
    """`maintenance`: when new revisions may be applied (SPEC 3.1).

    `windows`: parsed weekly windows ("Mon-Fri 01:00-05:00"); default none = any time.
    `timezone`: the IANA zone the windows are written in; default None = the device's local
    time zone (the device resolves it at start, `device.wiring.local_zone`).
    """

    windows: tuple[maintenance.Window, ...] = ()
    timezone: str | None = None


@dataclass(frozen=True)
class DeviceSettings:
    """The whole device config. `state_dir`: where state lives; default `/var/lib/reconciler`."""

    device: DeviceConfig
    source: SourceConfig
    trust: TrustConfig = TrustConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    health: HealthSettings = HealthSettings()
    policy: model.DevicePolicy = field(default_factory=model.DevicePolicy)
    state_dir: str = DEFAULT_STATE_DIR
    metrics: MetricsConfig = MetricsConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()

    @property
    def labels(self) -> dict[str, str]:
        """The device's labels as a dict, for selectors."""
        return dict(self.device.labels)

    def with_labels(self, merged: Mapping[str, str]) -> DeviceSettings:
        """A copy whose labels are `merged` (e.g. the result of `merge_label_files`)."""
        device = dataclasses.replace(self.device, labels=tuple(sorted(merged.items())))
        return dataclasses.replace(self, device=device)


def config_path(cli_value: str | None, env: Mapping[str, str]) -> str:
    """The config file to read: `--config` beats RECONCILER_CONFIG beats the default."""
    return cli_value or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read(path: str, *, env: Mapping[str, str], hostname: str) -> DeviceSettings:
    """Read and load the config at `path`; the only function here that does I/O."""
    try:
        with Path(path).open("rb") as handle:
            # One byte over the cap is enough for safe_yaml to reject an oversized file.
            data = handle.read(safe_yaml.MAX_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problem = errors.Problem(file=path, field="", message=f"cannot read the config: {reason}")
        raise errors.SettingsError([problem]) from None
    return load(data, file=path, env=env, hostname=hostname)


def load(data: bytes, *, file: str, env: Mapping[str, str], hostname: str) -> DeviceSettings:
    """Parse and validate config bytes; raise SettingsError carrying every problem.

    Keys that are absent keep the dataclass defaults; checks run per key from `_SCHEMA`, then
    the rules that span keys (required url, trust, hostname and DOCKER_HOST defaults).
    """
    try:
        document = safe_yaml.load(data, file=file)
    except errors.ProblemsError as exc:
        raise errors.SettingsError(exc.problems) from None
    r = _checks.Report(file, _checks.CONFIG_WORDING)
    if document is not None and not isinstance(document, dict):
        r.expected("", "a mapping of config sections", document)
        raise errors.SettingsError(r.problems)  # nothing else can be said about it
    top = r.known("", document, allowed=(*_SCHEMA, "state_dir"))
    found = {name: _checks.checked(r, name, top.get(name), checks=c) for name, c in _SCHEMA.items()}
    device, source, trust, runtime = (found[n] for n in ("device", "source", "trust", "runtime"))
    if "name" not in device:
        # Hostnames are case-insensitive and often capitalised; DNS labels are lower-case.
        name = hostname if labels.dns_label_error(hostname) is None else hostname.lower()
        if problem := labels.dns_label_error(name):
            r.add("device.name", f"not set, and the hostname cannot be used: {problem}")
        device["name"] = name
    if "url" not in source:
        r.add("source.url", r.wording.missing)
    if source.get("kind") == "static":
        for where, url in (("source.url", source.get("url")), *_mirror_entries(source)):
            if isinstance(url, str) and (problem := urls.static_url_problem(url)):
                r.add(where, f'"{_shown(urls.redact(url))}" {problem}')
    if trust.get("identities", ()) == () and trust.get("allow_unsigned") is not True:
        r.add(
            "trust.identities",
            "at least one identity is required unless trust.allow_unsigned is true",
        )
    if "docker_host" not in runtime and env.get("DOCKER_HOST"):
        runtime["docker_host"] = env["DOCKER_HOST"]
        if problem := _docker_host_error(env["DOCKER_HOST"]):
            r.add("runtime.docker_host", f"{problem} (from the DOCKER_HOST variable)")
    state_dir = _checks.nonblank(r, "state_dir", top["state_dir"]) if "state_dir" in top else None
    if r.problems:
        raise errors.SettingsError(r.problems)
    return DeviceSettings(
        device=DeviceConfig(**device),
        source=SourceConfig(**source),
        trust=TrustConfig(**trust),
        runtime=RuntimeConfig(**runtime),
        health=HealthSettings(**found["health"]),
        policy=model.DevicePolicy(**found["policy"]),
        state_dir=state_dir or DEFAULT_STATE_DIR,
        metrics=MetricsConfig(**found["metrics"]),
        maintenance=MaintenanceConfig(**found["maintenance"]),
    )


def merge_label_files(
    base: Mapping[str, str], files: Sequence[tuple[str, bytes]]
) -> dict[str, str]:
    """Merge flat label mappings over `base`; later files win. Problems name each file."""
    merged = dict(base)
    problems: list[errors.Problem] = []
    for name, data in files:
        try:
            document = safe_yaml.load(data, file=name)
        except errors.ProblemsError as exc:
            problems.extend(exc.problems)
            continue
        r = _checks.Report(name, _checks.CONFIG_WORDING)
        merged.update(_labels(r, "", document))
        problems.extend(r.problems)
    if problems:
        raise errors.SettingsError(problems)
    return merged


def _labels(r: _checks.Report, where: str, value: Any) -> tuple[tuple[str, str], ...]:
    """Sorted valid (key, value) pairs of a flat label mapping; each bad one is a problem."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        r.expected(where, "a mapping of label keys to values", value)
        return ()
    good: dict[str, str] = {}
    for key, item in value.items():
        problems = [p for p in (labels.label_key_error(key), labels.label_value_error(item)) if p]
        for problem in problems:
            r.add(r.at(where, key), problem)
        if not problems:
            good[key] = item
    return tuple(sorted(good.items()))


def _git_url_error(url: str) -> str | None:
    """urls.url_problem, the Git adapter's own rule, with the URL shown redacted: the message
    goes to logs and systemd, never a credential."""
    problem = urls.url_problem(url)
    return f'"{_shown(urls.redact(url))}" {problem}' if problem else None


def _mirror_entries(source: Mapping[str, Any]) -> list[tuple[str, object]]:
    return [(f"source.mirrors[{i}]", url) for i, url in enumerate(source.get("mirrors", ()))]


def _shown(value: str) -> str:
    """A found value as a message quotes it: one line, escaped, bounded."""
    return text.one_line(value, 200)


def _network_timeout(r: _checks.Report, where: str, value: object) -> float | None:
    """A deadline for a network call: > 0 and at most an hour (beyond, it is no deadline)."""
    seconds = _checks.positive_duration(r, where, value)
    if seconds is not None and seconds > _MAX_NETWORK_TIMEOUT:
        r.add(where, f'must be at most 1h, got "{value}"')
    return seconds


def _namespace_error(name: str) -> str | None:
    problem = labels.dns_label_error(name) if name else None
    return f'must be "" or a DNS label: {problem}' if problem else None


def _docker_host_error(host: str) -> str | None:
    scheme = host.partition("://")[0] if "://" in host else None
    if scheme is None or scheme in _DOCKER_SCHEMES:
        return None  # without a scheme docker reads "host:port" as tcp
    shown = _shown(urls.redact(host))  # `ftp://admin:TOKEN@host` must not reach a log
    return f'expected unix://PATH, tcp://HOST:PORT or ssh://[USER@]HOST, got "{shown}"'


def _listen_error(text: str) -> str | None:
    if not text or _split_listen(text):
        return None
    return f'expected "host:port" with a port from 1 to 65535, or "" to disable, got "{text}"'


def _identity(r: _checks.Report, where: str, value: Any) -> TrustIdentity | None:
    if not isinstance(value, dict):
        r.expected(where, "a mapping with identity and issuer", value)
        return None
    keys = ("identity", "issuer")
    entry = r.known(where, value, allowed=keys, required=keys)
    texts = {key: _checks.nonblank(r, r.at(where, key), item) for key, item in entry.items()}
    identity, issuer = texts.get("identity"), texts.get("issuer")
    return TrustIdentity(identity=identity, issuer=issuer) if identity and issuer else None


def _abs_path(r: _checks.Report, where: str, value: Any) -> str | None:
    path = _checks.nonblank(r, where, value)
    if path is None:
        return None
    if not path.startswith("/"):
        r.add(where, f'expected an absolute path, got "{path}"')
    elif ".." in path.split("/"):
        r.add(where, f'must not contain ".." (a prefix check could be escaped), got "{path}"')
    # Canonical form, so "under one of these" is a plain component-wise prefix test.
    return "/" + "/".join(part for part in path.split("/") if part not in ("", "."))


def _command(r: _checks.Report, where: str, value: Any) -> tuple[str, ...] | None:
    """An argv from a string (split like a shell, never run by one) or a list of strings."""
    if isinstance(value, str):
        if len(value) > _MAX_COMMAND_TEXT:  # shlex takes seconds over a long string
            r.add(where, f"longer than {_MAX_COMMAND_TEXT} characters; write it as a list")
            return None
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            r.add(where, f'cannot split "{value}" into words: {exc}')
            return None
    elif isinstance(value, list):
        parts = [_checks.string(r, at, part) for at, part in r.entries(where, value)]
        argv = [part for part in parts if part is not None]
        if len(argv) < len(parts):
            return None
    else:
        r.expected(where, "a command string or a list of strings", value)
        return None
    if not argv or not argv[0].strip():
        r.add(where, "empty command; expected a program and its arguments")
    return tuple(argv)


def _window(r: _checks.Report, where: str, value: Any) -> maintenance.Window | None:
    text = _checks.nonblank(r, where, value)
    if text is None:
        return None
    try:
        return maintenance.parse_window(text)
    except ValueError as exc:
        r.add(where, str(exc))
        return None


def _windows(r: _checks.Report, where: str, value: Any) -> tuple[maintenance.Window, ...] | None:
    found = _checks.list_of(_window)(r, where, value)
    return None if found is None else tuple(w for w in found if w is not None)


def _split_listen(text: str) -> tuple[str, int] | None:
    match = _LISTEN.fullmatch(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return None
    return match["host"].strip("[]"), int(match["port"])


_SCHEMA: dict[str, dict[str, _checks.Check]] = {
    "device": {
        "name": _checks.rule(_checks.string, labels.dns_label_error),
        "labels": _labels,
        "labels_dir": _checks.nonblank,
    },
    "source": {
        "kind": _checks.choice(*SOURCE_KINDS),
        "url": _checks.rule(_checks.nonblank, _git_url_error),
        "mirrors": _checks.list_of(_checks.rule(_checks.nonblank, _git_url_error)),
        "branch": _checks.rule(_checks.nonblank, urls.branch_problem),
        "poll_interval": _checks.positive_duration,
        "jitter": _checks.fraction,
        "timeout": _network_timeout,
    },
    "trust": {
        "identities": _checks.list_of(_identity),
        "trusted_root": _checks.nonblank,
        "allow_unsigned": _checks.flag,
    },
    "runtime": {
        "docker_host": _checks.rule(_checks.nonblank, _docker_host_error),
        "namespace": _checks.rule(_checks.string, _namespace_error),
        "pull_stall_timeout": _network_timeout,
    },
    "health": {
        "timeout": _checks.positive_duration,
        "stable_for": _checks.duration,
        "commands": _checks.list_of(_command),
    },
    "policy": {
        "allowed_registries": _checks.list_of(_checks.nonblank),
        "require_digest": _checks.flag,
        "allow_privileged": _checks.flag,
        "allow_host_network": _checks.flag,
        "allowed_host_paths": _checks.list_of(_abs_path),
    },
    "metrics": {
        "listen": _checks.rule(_checks.string, _listen_error),
        "pushgateway": _checks.string,
    },
    "maintenance": {
        "windows": _windows,
        "timezone": _checks.rule(_checks.nonblank, maintenance.zone_problem),
    },
}
