"""The demo's parts on this machine: a container engine, the web images and a registry on
loopback, and the removal of what an earlier run left.

`run_demo` narrates and calls these; nothing here prints. Engines come from testkit/engine.py
(reuse one that answers, else start dockerd on the project's own socket), images from
testkit/images.py (FROM-scratch busybox builds, no pulls) and the registry from
testkit/registry.py (Debian's docker-registry on 127.0.0.1).

Must not: remove a container, network or image tag it did not record or label as the demo's;
delete a directory the demo did not create; pull anything from outside this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.errors

from reconciler import model
from reconciler.core import labels
from testkit import engine
from testkit.images import BusyboxUnusable, ImageFactory, check_busybox
from testkit.registry import LocalRegistry, RegistryError

DEFAULT_ENGINE = "unix:///var/run/docker.sock"  # where Debian's docker.io listens under systemd
MARKER = ".reconciler-demo"  # made by the demo: a later run may delete the directory holding it
OWNER = "demo"  # in the engine's started marker: test sessions never stop the demo's engine
RECORD = "demo.json"  # what a run made in the engine, for the next run's clean-up
# busybox httpd as PID 1 ignores SIGTERM: a shell that exits on it keeps every replace quick.
HTTPD = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
# Crashes a second after it starts, as a bad config would. Not at once: Docker 20.10 refuses to
# rename a container between two of its restarts ("sandbox not found"), and the reconciler renames
# a replacement right after starting it, so an instant crash can fail the apply instead of the
# health check (it still rolls back, but for a reason that would puzzle a viewer).
CRASHES = [
    "sh",
    "-c",
    "sleep 1; echo 'web 1.2: cannot read /etc/web/config.yaml' >&2; exit 1",
]
VERSIONS = ("1.0", "1.1", "1.2")  # 1.0 and 1.1 serve their page; 1.2 crashes
# Loopback must never go through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DemoError(Exception):
    """Something the demo needs or shows did not turn out as it says; the message says what."""


def page(version: str) -> str:
    """What web VERSION serves at /."""
    return f"Hello from web {version}"


# --- the engine --------------------------------------------------------------------------------


@dataclass
class Engine:
    """An answering engine. `lease` is held until the process exits and never released. The
    engine is leased as the demo's (`OWNER`): it keeps running after the demo, with the app a
    person may curl, and no test session stops it, even one that started it."""

    url: str
    client: docker.DockerClient
    lease: engine.EngineLease | None = None

    @property
    def started_here(self) -> bool:
        return self.lease is not None and self.lease.started_here

    @property
    def pidfile(self) -> Path:
        return engine.EngineLayout.from_env(os.environ).pidfile


def find_engine() -> Engine | None:
    """An engine that answers now (DOCKER_HOST, the default socket, the project's socket)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and engine.answers(host, from_env=True):
        return Engine(host, docker.from_env(timeout=120))
    for url in (DEFAULT_ENGINE, engine.EngineLayout.from_env(os.environ).url):
        if engine.answers(url):
            return Engine(url, docker.DockerClient(base_url=url, timeout=120))
    return None


def acquire_engine() -> Engine:
    """An answering engine, else dockerd started on the project's own socket (needs root)."""
    env = dict(os.environ)
    if not env.get("DOCKER_HOST") and engine.answers(DEFAULT_ENGINE):
        env["DOCKER_HOST"] = DEFAULT_ENGINE
    try:
        lease = engine.acquire(env=env, owner=OWNER)
    except (engine.EngineUnavailable, engine.EngineStartError) as exc:
        raise DemoError(f"no container engine: {exc}") from exc
    client = (
        docker.from_env(environment=env, timeout=120)
        if lease.from_env
        else docker.DockerClient(base_url=lease.url, timeout=120)
    )
    return Engine(lease.url, client, lease)


# --- what a run made, and its removal ----------------------------------------------------------


@dataclass
class Record:
    """What a run made outside its directory, kept in it as demo.json for the next clean-up."""

    namespaces: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)  # registry tags: a new port every run
    built: list[str] = field(default_factory=list)  # the build cache a rerun reuses
    # The registry's config file: names its process and temp dir if the run was killed.
    registry_config: str = ""

    @classmethod
    def load(cls, root: Path) -> Record:
        try:
            data = json.loads((root / RECORD).read_text(encoding="utf-8"))
            lists = {
                k: [str(v) for v in data.get(k, [])] for k in ("namespaces", "pulled", "built")
            }
            return cls(**lists, registry_config=str(data.get("registry_config", "")))
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, root: Path) -> None:
        (root / RECORD).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Removed:
    """What `clean` removed from the engine (its directory always goes)."""

    containers: int
    image_tags: int


def start_directory(root: Path, namespace: str) -> Record:
    """Create the demo directory with its marker and an empty record."""
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by ./demo.sh; ./demo.sh --clean removes it\n")
    record = Record(namespaces=[namespace])
    record.save(root)
    return record


def clean(
    root: Path, namespace: str, client: docker.DockerClient | None, *, build_cache: bool
) -> Removed:
    """Remove what an earlier run left: the namespace's containers and networks, the image tags
    it recorded (`build_cache`: the built images too) and its directory."""
    if root.is_symlink() or (
        root.exists() and not (root / MARKER).exists() and any(root.iterdir())
    ):
        raise DemoError(f"{root} exists and was not made by the demo; set another directory")
    record = Record.load(root)
    containers = tags = 0
    if client is not None:
        # Never an empty namespace: that label value is the one a real device's reconciler uses.
        for ns in sorted({namespace, *record.namespaces}):
            if labels.dns_label_error(ns):
                continue
            by_label = {"label": f"{model.LABEL_NAMESPACE}={ns}"}
            for container in client.containers.list(all=True, filters=by_label):
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    container.remove(force=True)
                    containers += 1
            for network in client.networks.list(filters=by_label):
                with contextlib.suppress(docker.errors.NotFound):
                    network.remove()
        for tag in record.pulled + (record.built if build_cache else []):
            try:
                client.images.remove(tag)  # an image with other tags is only untagged
            except docker.errors.APIError:
                continue  # gone already, or used by a container that is not the demo's
            tags += 1
    if record.registry_config:
        stop_leftover_registry(Path(record.registry_config))
    shutil.rmtree(root, ignore_errors=True)
    return Removed(containers, tags)


def stop_leftover_registry(config: Path) -> None:
    """Stop the registry a killed run left (found by its own config file) and remove its dir."""
    wanted = [b"docker-registry", b"serve", bytes(config)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv[:3] == wanted:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGTERM)
    if config.parent.name.startswith("reconciler-registry-"):  # LocalRegistry's temp dir
        shutil.rmtree(config.parent, ignore_errors=True)


# --- images and registry -----------------------------------------------------------------------


def publish_images(
    client: docker.DockerClient, record: Record, root: Path, *, namespace: str
) -> tuple[LocalRegistry, dict[str, str]]:
    """Build web 1.0, 1.1 and 1.2, push them to a new registry on 127.0.0.1; the registry and
    each version's `127.0.0.1:PORT/demo/web:VERSION` reference. The caller closes the registry.

    Builds are tagged per namespace (`reconciler-test/NAMESPACE/web-VERSION:SPECHASH`), so a rerun
    reuses its own, and one demo's clean-up never untags what another one is about to push."""
    try:
        factory = ImageFactory(client, busybox=check_busybox())
        registry = LocalRegistry(client)
    except (BusyboxUnusable, RegistryError) as exc:
        raise DemoError(f"{exc} (./demo.sh runs scripts/install.sh, which installs it)") from exc
    record.registry_config = str(registry.log_path.parent / "config.yml")
    record.save(root)
    try:
        refs = {}
        for version in VERSIONS:
            if version == "1.2":
                local = factory.build(f"{namespace}/web-{version}", cmd=CRASHES)
            else:
                files = {"/www/index.html": page(version) + "\n", "/www/healthz": "ok\n"}
                local = factory.build(f"{namespace}/web-{version}", cmd=HTTPD, files=files)
            record.built.append(local)
            registry.push(local, f"demo/web:{version}")
            refs[version] = f"{registry.address}/demo/web:{version}"
            record.pulled.append(refs[version])
            record.save(root)
            # Drop the tag the push left behind, so the device really pulls from the registry.
            client.images.remove(refs[version])
    except BaseException:
        registry.close()
        raise
    return registry, refs


def fetch(url: str) -> str:
    """The body at `url`, stripped, or why there is none."""
    try:
        with _NO_PROXY.open(url, timeout=2) as reply:
            return str(reply.read().decode()).strip()
    except (urllib.error.URLError, OSError) as exc:
        return f"(no answer: {exc})"
