"""A device lab for tests and benchmarks: a fleet repo, a device config, and the real CLI.

`DeviceLab` owns one fleet repo checkout (real git), one device config (its own namespace,
state_dir and ports on the shared test engine) and runs `reconciler once|status|run` as the
installed console script, the way an operator does. Images come from the local registry on
127.0.0.1, so every pull stays on loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from reconciler import model
from reconciler.core import release
from reconciler.fleet import release_verb
from testkit.cli import CONSOLE_SCRIPT, Run
from testkit.fleet_repos import GIT_ENV, FleetRepo
from testkit.loopback import free_port

__all__ = [
    "DeviceLab",
    "LabSigner",
    "Run",
    "app_manifest",
    "container_actions",
    "http_get",
    "log_events",
    "managed",
    "metric",
    "remove_namespace",
    "scrape",
]


def app_manifest(
    name: str,
    containers: list[dict[str, object]],
    *,
    selector: dict[str, object] | None = None,
) -> str:
    # `spec.selector` is required (SPEC 2.1); by default the app selects every device.
    spec: dict[str, object] = {"selector": {} if selector is None else selector}
    spec["containers"] = containers
    doc = {"apiVersion": "reconciler/v1", "kind": "App", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)


def http_get(port: int, path: str = "/index.html", *, timeout: float = 10.0) -> str | None:
    """The body served on 127.0.0.1:port, waiting up to `timeout` for it to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return reply.read().decode()
        # A body cut short (IncompleteRead, an HTTPException) is a container being replaced.
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


@dataclass(frozen=True)
class LabSigner:
    """A lab CA directory and the identity it signs releases as."""

    ca: Path
    identity: str = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
    issuer: str = "https://token.actions.example.test"


@dataclass
class DeviceLab:
    root: Path
    docker_host: str
    namespace: str
    device_name: str = "dev-01"
    labels: dict[str, str] = field(default_factory=lambda: {"role": "gateway"})
    policy: dict[str, object] = field(default_factory=dict)
    source_url: str | None = None
    mirrors: list[str] = field(default_factory=list)
    source_kind: str = "git"  # "static": source_url is a published tree (SPEC 2.4)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. SSL_CERT_FILE of a test CA
    metrics_listen: str = ""
    signer: LabSigner | None = None  # None: unsigned releases and trust.allow_unsigned

    def __post_init__(self) -> None:
        self.fleet = FleetRepo(self.root / "fleet")
        self.state_dir = self.root / "state"
        self.config_path = self.root / "etc" / "config.yaml"
        self.labels_dir = self.root / "etc" / "labels.d"
        self.labels_dir.mkdir(parents=True)
        self.write_config()

    # --- the fleet repo --------------------------------------------------------------------

    def publish(
        self,
        apps: Mapping[str, str | None],
        message: str = "change",
        *,
        now: datetime | None = None,
        expires_in: float = 30 * 86400,
    ) -> str:
        """Write (or, with None, delete) app manifests and commit them, then release (signed
        with the lab CA when `signer` is set) and commit the release; the last commit."""
        for name, text in apps.items():
            path = self.fleet.root / "apps" / name / "app.yaml"
            if text is None:
                path.unlink()
            else:
                self.fleet.write(f"apps/{name}/app.yaml", text)
        self.fleet.commit(message)  # a release pins committed manifests only
        code, data = release_verb.write_release(self.fleet.root, now=now, expires_in=expires_in)
        assert code == 0 and data is not None, "release of the test fleet repo failed"
        if self.signer is not None:
            self.sign(data)
        return self.fleet.commit(f"release: {message}")

    def sign(self, data: bytes, signer: LabSigner | None = None) -> None:
        """Write the bundle over `data` beside the release (default signer: the lab's)."""
        from reconciler.fleet import lab_ca

        using = signer or self.signer
        assert using is not None
        bundle = lab_ca.sign(using.ca, data, identity=using.identity, issuer=using.issuer)
        (self.fleet.root / release.BUNDLE_PATH).write_bytes(bundle)

    # --- the device ------------------------------------------------------------------------

    def write_config(self, **overrides: object) -> None:
        config: dict[str, object] = {
            "device": {
                "name": self.device_name,
                "labels": self.labels,
                "labels_dir": str(self.labels_dir),
            },
            "source": {
                "url": self.source_url or str(self.fleet.root),
                "mirrors": self.mirrors,
                "poll_interval": "1h",
                **({"kind": self.source_kind} if self.source_kind != "git" else {}),
            },
            "trust": self.trust(),
            "runtime": {"docker_host": self.docker_host, "namespace": self.namespace},
            "policy": {"allowed_host_paths": [str(self.root)], **self.policy},
            # Every changed app must then stay up for stable_for: 1 s keeps the tests quick.
            "health": {"timeout": "30s", "stable_for": "1s"},
            "state_dir": str(self.state_dir),
            "metrics": {"listen": self.metrics_listen},
        }
        config.update(overrides)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def trust(self) -> dict[str, object]:
        if self.signer is None:
            return {"allow_unsigned": True}
        return {
            "identities": [{"identity": self.signer.identity, "issuer": self.signer.issuer}],
            "trusted_root": str(self.signer.ca / "trusted_root.json"),
        }

    def env(self) -> dict[str, str]:
        env = {**os.environ, **GIT_ENV, **self.extra_env}
        env.pop("DOCKER_HOST", None)  # the config names the engine
        return env

    def cli(self, *args: str, timeout: float = 180) -> Run:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), *args, "--config", str(self.config_path)],
            check=False,
            env=self.env(),
            capture_output=True,
            timeout=timeout,
        )
        return Run(result.returncode, result.stdout.decode(), result.stderr.decode())

    def once(self) -> Run:
        return self.cli("once")

    def status(self) -> dict[str, object]:
        run = self.cli("status", "--json")
        assert run.code == 0, run.err
        return json.loads(run.out)

    def start_daemon(self) -> subprocess.Popen[bytes]:
        """`reconciler run` in the background; its log lines go to `daemon_log`."""
        with self.daemon_log.open("ab") as log:
            return subprocess.Popen(
                [str(CONSOLE_SCRIPT), "run", "--config", str(self.config_path)],
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @staticmethod
    def free_port() -> int:
        return free_port()


def log_events(stderr: str) -> list[dict[str, object]]:
    """The JSON log records in a run's stderr."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def web(image: str, port: int, **fields: object) -> dict[str, object]:
    """Container `web` of `image`, its port 80 published on 127.0.0.1:port; more fields given."""
    return {"name": "web", "image": image, "ports": [f"127.0.0.1:{port}:80"], **fields}


def managed(client: docker.DockerClient, namespace: str) -> list[Any]:
    """The engine's containers labelled with `namespace`, running or not."""
    label = f"{model.LABEL_NAMESPACE}={namespace}"
    for _ in range(10):
        try:
            return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
        except docker.errors.APIError as exc:
            # Podman answers 500 "no such container" (not 404) for one removed between the
            # list and its inspect: ask again.
            if "no such container" not in str(exc.explanation).lower():
                raise
    return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def remove_namespace(client: docker.DockerClient, namespace: str) -> None:
    """Remove the containers (with their anonymous volumes) and networks labelled with
    `namespace`; one already gone is no error (a test or the device may have removed it)."""
    label = {"label": f"{model.LABEL_NAMESPACE}={namespace}"}
    for container in client.containers.list(all=True, filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


def container_actions(client: docker.DockerClient, namespace: str, since: float) -> list[str]:
    """The engine's container event actions for `namespace` since `since` (Unix time)."""
    until = time.time() + 0.5
    stream = client.events(
        since=int(since),
        until=int(until) + 1,
        decode=True,
        filters={"type": "container", "label": f"{model.LABEL_NAMESPACE}={namespace}"},
    )
    return [e["Action"] for e in stream if e.get("timeNano", 0) >= since * 1e9]


def scrape(lab: DeviceLab) -> str:
    """The daemon's metrics exposition, or "" while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{lab.metrics_listen}/metrics", timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return ""


def metric(text: str, series: str) -> float:
    """The sample of `series` (name with labels) in an exposition, 0 when absent."""
    for line in text.splitlines():
        if line.split(" ")[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
