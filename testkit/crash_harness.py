"""The SIGKILL harness: changes to one app, `reconciler once` killed at a chosen moment, and the
managed containers as observed, shared by tests/integration/test_crash_safety.py (SPEC 3.2) and
its randomized sibling bench/soak_sigkill.py.

Owns: the images the changes use (`push_images`), one change per step (`release_step`: good, or
bad with a container that exits at once, so a rollback), a run of `reconciler once` that can be
SIGKILLed with its process group (`run_once`), and what the engine runs (`observed`,
`all_running`). The verdicts are the callers'.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import docker

from reconciler import model
from testkit.cli import CONSOLE_SCRIPT
from testkit.device_lab import DeviceLab, app_manifest
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry

HEALTH = {"timeout": "4s", "stable_for": "0.5s"}
Containers = tuple[tuple[str, str, str, str], ...]  # (app, container, revision, image)


def push_images(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    """The images the changes use, pushed to the registry: name -> pullable reference."""
    out = {}
    for name, local in {
        "a": images.httpd("cs-web-a", "crash a"),
        "b": images.httpd("cs-web-b", "crash b"),
        "side": images.sleeper("cs-side"),
        "exits": images.exits("cs-exits", code=2),
    }.items():
        registry.push(local, f"cs/{name}:1")
        out[name] = f"{registry.address}/cs/{name}:1"
    return out


def release_step(lab: DeviceLab, refs: dict[str, str], *, port: int, step: int, bad: bool) -> None:
    """Commit a release of app `web` (containers web and side) for `step`: a good change, or
    with `bad` one whose web container exits at once (a failed health check, a rollback)."""
    image = "exits" if bad else ("a" if step % 2 else "b")
    web = {
        "name": "web",
        "image": refs[image],
        "ports": [f"127.0.0.1:{port}:80"],
        "env": {"STEP": str(step)},  # a new revision every step: never a held-back one
        "restart": "no" if bad else "unless-stopped",
    }
    side = {"name": "side", "image": refs["side"], "env": {"STEP": str(step)}}
    lab.publish({"web": app_manifest("web", [web, side])}, message=f"step {step}")


def observed(client: docker.DockerClient, namespace: str) -> Containers:
    label = {"label": f"{model.LABEL_NAMESPACE}={namespace}"}
    return tuple(
        sorted(
            (
                c.labels[model.LABEL_APP],
                c.labels[model.LABEL_CONTAINER],
                c.labels[model.LABEL_REVISION],
                c.attrs["Config"]["Image"],
            )
            for c in client.containers.list(all=True, filters=label)
        )
    )


def all_running(client: docker.DockerClient, namespace: str) -> bool:
    label = {"label": f"{model.LABEL_NAMESPACE}={namespace}"}
    return all(c.status == "running" for c in client.containers.list(all=True, filters=label))


def run_once(lab: DeviceLab, *, kill_after: float | None = None) -> tuple[int, float]:
    """Run `reconciler once`; with `kill_after`, SIGKILL it then (its whole process group).
    Its output goes to `once.log` in the lab, for the failure message."""
    started = time.monotonic()
    with (lab.root / "once.log").open("wb") as log:
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "once", "--config", str(lab.config_path)],
            env=lab.env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        if kill_after is not None:
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        code = process.wait(timeout=180)
    return code, time.monotonic() - started
