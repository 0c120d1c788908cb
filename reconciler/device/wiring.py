"""Wiring of the device verbs: settings from disk, then the adapters and the Reconciler on them.

Shell: the only module that knows which concrete adapters the device uses (GitSource or
StaticSource by `source.kind`, DockerEngine, StateStore). `once`, `run` and `status` build
what they need here, so each verb stays a few lines. Heavy imports (GitPython, docker,
urllib3) happen inside `open_device`, not at import.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import errors, ports, text
from reconciler.core import safe_yaml, settings
from reconciler.device import state_store

if TYPE_CHECKING:
    from reconciler.adapters.docker_engine import DockerEngine
    from reconciler.device.cycle import Reconciler
    from reconciler.device.metrics import Metrics

GIT_CACHE = "mirror.git"  # the bare cache repo inside state_dir
STATIC_CACHE = "static"  # releases and blobs of a published tree inside state_dir
# The limit of every YAML file: safe_yaml refuses a bigger one by name, never truncated.
MAX_LABEL_FILE_BYTES = safe_yaml.MAX_BYTES


def load_settings(config_path: str) -> settings.DeviceSettings:
    """The device config with the label files of `device.labels_dir` merged over its labels.

    Raises SettingsError naming every problem (the CLI exits 2 on it).
    """
    loaded = read_config(config_path)
    labels_dir = loaded.device.labels_dir
    if labels_dir is None:
        return loaded
    return loaded.with_labels(
        settings.merge_label_files(loaded.labels, read_label_files(labels_dir))
    )


def read_config(config_path: str) -> settings.DeviceSettings:
    """The device config file alone, labels.d not merged; the host name is the default name.

    Raises SettingsError naming every problem.
    """
    return settings.read(config_path, env=os.environ, hostname=socket.gethostname())


def load_failure(config_path: str, labels_dir: str | None, exc: Exception) -> str:
    """One line for an exception (not a SettingsError) out of `load_settings`: a parser that
    crashed on hostile bytes does not say which file it was reading, so both sources are named."""
    where = config_path if labels_dir is None else f"{config_path} or a file in {labels_dir}"
    return text.one_line(f"{where}: cannot be loaded: {type(exc).__name__}: {exc}")


def read_label_files(labels_dir: str) -> list[tuple[str, bytes]]:
    """`*.yaml` files of `labels_dir` in name order (later files win); a missing dir is empty."""
    directory = Path(labels_dir)
    if not directory.is_dir():
        return []
    files = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            with path.open("rb") as handle:
                files.append((str(path), handle.read(MAX_LABEL_FILE_BYTES + 1)))
        except OSError as exc:
            problem = errors.Problem(str(path), "", f"cannot read: {exc.strerror or exc}")
            raise errors.SettingsError([problem]) from None
    return files


def source_urls(device_settings: settings.DeviceSettings) -> tuple[str, ...]:
    return (device_settings.source.url, *device_settings.source.mirrors)


def local_source_path(device_settings: settings.DeviceSettings) -> Path | None:
    """The fleet repo's directory when `source.url` is a local path or file URL (an air-gapped
    drop the daemon watches), else None."""
    url = device_settings.source.url
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url or (":" in url.split("/", 1)[0]):
        return None  # a network URL or scp-like host:path
    return Path(url)


@dataclass
class Device:
    """The adapters of one device and the Reconciler running on them."""

    settings: settings.DeviceSettings
    store: state_store.StateStore
    source: ports.FleetSource
    engine: DockerEngine
    reconciler: Reconciler


@contextmanager
def open_device(
    device_settings: settings.DeviceSettings, *, metrics: Metrics | None = None
) -> Iterator[Device]:
    """Adapters for `device_settings`, closed on exit. The caller holds the state lock."""
    from reconciler.device.cycle import Reconciler

    store = state_store.StateStore(device_settings.state_dir)
    source = open_source(device_settings)
    engine = open_engine(device_settings)
    try:
        yield Device(
            settings=device_settings,
            store=store,
            source=source,
            engine=engine,
            reconciler=Reconciler(
                settings=device_settings,
                labels=device_settings.labels,
                git=source,
                engine=engine,
                store=store,
                metrics=metrics,
            ),
        )
    finally:
        source.close()
        engine.close()


def open_source(device_settings: settings.DeviceSettings) -> ports.FleetSource:
    """The fleet source `source.kind` names, its cache inside state_dir."""
    urls = source_urls(device_settings)
    state_dir = Path(device_settings.state_dir)
    if device_settings.source.kind == "static":
        from reconciler.adapters.static_source import StaticSource

        return StaticSource(
            cache_dir=state_dir / STATIC_CACHE, urls=urls, timeout=device_settings.source.timeout
        )
    from reconciler.adapters.git_source import GitSource

    return GitSource(
        cache_dir=state_dir / GIT_CACHE,
        urls=urls,
        branch=device_settings.source.branch,
        timeout=device_settings.source.timeout,
        sole_user=True,  # the device verbs hold state_dir's lock while they use it
    )


def open_engine(device_settings: settings.DeviceSettings, *, timeout: float = 60.0) -> DockerEngine:
    """The container engine of `device_settings` (Docker Engine, or Podman's compatible API);
    `timeout` bounds every API call. The caller closes it."""
    from reconciler.adapters.docker_engine import DockerEngine

    return DockerEngine(
        base_url=device_settings.runtime.docker_host,
        namespace=device_settings.runtime.namespace,
        timeout=timeout,
        pull_stall_timeout=device_settings.runtime.pull_stall_timeout,
    )
