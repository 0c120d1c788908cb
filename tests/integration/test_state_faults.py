"""Faults of the device's own storage and clock, against a real engine, registry and Git repo.

Each test asserts that nothing is lost (the running apps keep serving, `state.json` keeps the
last good state) and that the device recovers by itself once the fault is gone: a full or
read-only `state_dir` (a small tmpfs mounted by the test, which runs as root), a `state.json`
truncated, emptied, garbled or written by a future schema (never overwritten by the device), an
env file removed, made unreadable or malformed, and the wall clock stepped back and forth. The
clock is the one fault injected rather than provoked: stepping the real clock would disturb
every other process on the machine, so the cycle is handed its `now` (as the daemon does,
reading the clock once per cycle) and `time.time` is patched during a health wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.adapters.git_source import GitSource
from reconciler.core import status
from reconciler.device import executor, state_store, wiring
from testkit.device_lab import (
    DeviceLab,
    app_manifest,
    http_get,
    log_events,
    managed,
    metric,
    scrape,
    web,
)
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry
from testkit.waiting import eventually

pytestmark = pytest.mark.docker

WAIT = 60.0
TMPFS_SIZE = "2m"  # room for the Git mirror and the state of a two-app fleet


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2", "v3"):
        registry.push(images.httpd(f"state-web-{version}", f"page {version}"), f"sf/web:{version}")
        refs[version] = f"{registry.address}/sf/web:{version}"
    return refs


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.write_config(health={"timeout": "30s", "stable_for": "0s"})
    return lab


@pytest.fixture
def small_state_dir(lab: DeviceLab) -> Iterator[Path]:
    """`state_dir` on a tmpfs of TMPFS_SIZE, unmounted at teardown."""
    lab.state_dir.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(lab.state_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield lab.state_dir
    finally:
        subprocess.run(["umount", "-l", str(lab.state_dir)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its file system is full; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 512, 1):  # big chunks first, then the last crumbs
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def prefetch(lab: DeviceLab) -> None:
    """Bring the branch head into the device's Git mirror, as a cycle whose state write then
    failed would have: the next cycle's first write is then a state write."""
    cache = lab.state_dir / wiring.GIT_CACHE
    with GitSource(cache_dir=cache, urls=[str(lab.fleet.root)], branch="main") as git:
        head = git.head()
        git.ensure(head.commit, head.remote)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


# --- state_dir full or read-only -------------------------------------------------------------


def test_a_full_state_dir_refuses_the_change_loses_nothing_and_applies_once_there_is_room(
    lab: DeviceLab,
    small_state_dir: Path,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    assert lab.once().code == 0
    (running,) = managed(docker_client, lab.namespace)
    good = (small_state_dir / "state.json").read_bytes()
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])})
    prefetch(lab)
    filler = fill(small_state_dir)

    full = lab.once()
    shown = lab.cli("status")

    state_json = small_state_dir / "state.json"
    assert full.code == 1
    assert f"cannot write {state_json}: No space left on device" in full.out
    assert "Traceback" not in full.err
    assert state_json.read_bytes() == good  # the last good state, whole
    assert [c.id for c in managed(docker_client, lab.namespace)] == [running.id]
    assert http_get(port) == "page v1"
    assert shown.code == 0, shown.err
    assert f"last error: state_dir {small_state_dir} is full" in shown.out
    assert not [p for p in small_state_dir.iterdir() if p.name.startswith(".tmp-")]

    filler.unlink()
    again = lab.once()

    assert again.code == 0, again.out + again.err
    assert http_get(port) == "page v2"
    assert "last error: none" in lab.cli("status").out


def test_a_read_only_state_dir_serves_on_refuses_changes_and_applies_once_writable(
    lab: DeviceLab,
    small_state_dir: Path,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
):
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    assert lab.once().code == 0
    (running,) = managed(docker_client, lab.namespace)
    remount(small_state_dir, "ro")
    try:
        unchanged = lab.once()  # nothing to record: a read-only state_dir is no obstacle
        assert unchanged.code == 0 and unchanged.out.startswith("unchanged"), unchanged.err

        remount(small_state_dir, "rw")
        lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])})
        prefetch(lab)
        remount(small_state_dir, "ro")
        refused = lab.once()
        shown = lab.status()
    finally:
        remount(small_state_dir, "rw")

    assert refused.code == 1
    assert f"cannot write {small_state_dir / 'state.json'}: Read-only file system" in refused.out
    assert [c.id for c in managed(docker_client, lab.namespace)] == [running.id]
    assert http_get(port) == "page v1"
    assert str(shown["state_dir_error"]).startswith(
        f"state_dir {small_state_dir} is on a read-only"
    )
    assert str(shown["last_error"]).startswith(f"state_dir {small_state_dir}")

    again = lab.once()
    assert again.code == 0, again.out + again.err
    assert http_get(port) == "page v2"


def test_a_daemon_started_on_a_read_only_state_dir_serves_on_and_applies_once_writable(
    lab: DeviceLab,
    small_state_dir: Path,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
    daemons: list[subprocess.Popen[bytes]],
):
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config(
        health={"timeout": "30s", "stable_for": "0s"},
        source={"url": str(lab.fleet.root), "poll_interval": "200ms"},
    )
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    assert lab.once().code == 0
    (running,) = managed(docker_client, lab.namespace)
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])})
    prefetch(lab)
    remount(small_state_dir, "ro")
    try:
        process = lab.start_daemon()  # not even its pid file can be written
        daemons.append(process)
        eventually(
            lambda: metric(scrape(lab), 'reconciler_cycles_total{result="failed"}') >= 2,
            "failed cycles counted",
        )
        assert process.poll() is None
        assert [c.id for c in managed(docker_client, lab.namespace)] == [running.id]
        assert http_get(port) == "page v1"
        shown = lab.status()
        assert str(shown["last_error"]).startswith(f"state_dir {small_state_dir} is on a read-")
    finally:
        remount(small_state_dir, "rw")

    eventually(lambda: http_get(port, timeout=0.5) == "page v2", "applied once writable")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT) == 0
    events = [r["event"] for r in log_events(lab.daemon_log.read_text())]
    assert "daemon.pid_file_failed" in events and events[-1] == "daemon.stop"


# --- state.json unreadable --------------------------------------------------------------------

CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda good: good[: len(good) // 2], "not valid JSON"),
    "empty": (lambda good: b"", "not valid JSON"),
    "garbage": (lambda good: b"\x89PNG\r\n\x1a\n\xff\xfe garbage", "not valid JSON"),
    "future schema": (
        lambda good: good.replace(b'"schema_version": 2', b'"schema_version": 3'),
        "schema_version: unknown schema version 3",
    ),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_an_unreadable_state_json_is_named_never_overwritten_and_nothing_is_touched(
    lab: DeviceLab, pages: dict[str, str], docker_client: docker.DockerClient, kind: str
):
    corrupt, reason = CORRUPTIONS[kind]
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    assert lab.once().code == 0
    (running,) = managed(docker_client, lab.namespace)
    state_json = lab.state_dir / "state.json"
    good = state_json.read_bytes()
    bad = corrupt(good)
    state_json.write_bytes(bad)
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])})

    refused = lab.once()
    shown = lab.cli("status")

    assert refused.code == 1
    assert f"{state_json}" in refused.err + refused.out and reason in refused.err + refused.out
    assert "Traceback" not in refused.err
    assert state_json.read_bytes() == bad  # no silent reset: a person decides
    assert [c.id for c in managed(docker_client, lab.namespace)] == [running.id]
    assert http_get(port) == "page v1"
    assert shown.code == 1 and str(state_json) in shown.err and reason in shown.err

    state_json.write_bytes(good)  # restored (from a backup, or the version before a downgrade)
    again = lab.once()
    assert again.code == 0, again.out + again.err
    assert http_get(port) == "page v2"


def test_the_daemon_lives_on_with_an_unreadable_state_json_and_never_overwrites_it(
    lab: DeviceLab,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
    daemons: list[subprocess.Popen[bytes]],
):
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config(
        health={"timeout": "30s", "stable_for": "0s"},
        source={"url": str(lab.fleet.root), "poll_interval": "200ms"},
    )
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])})
    assert lab.once().code == 0
    state_json = lab.state_dir / "state.json"
    good = state_json.read_bytes()
    state_json.write_bytes(b'{"schema_version": 1, "apps": [')  # torn, as by a bad disk
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])})

    process = lab.start_daemon()
    daemons.append(process)
    eventually(
        lambda: metric(scrape(lab), 'reconciler_cycles_total{result="failed"}') >= 3,
        "three failed cycles counted",
    )

    assert process.poll() is None
    assert state_json.read_bytes() == b'{"schema_version": 1, "apps": ['
    assert http_get(port) == "page v1"
    aborted = [r for r in log_events(lab.daemon_log.read_text()) if r["event"] == "cycle.aborted"]
    assert aborted and str(state_json) in str(aborted[0]["error"])
    assert "exception" not in aborted[0]  # a fault of the device, not a bug: no traceback

    state_json.write_bytes(good)
    eventually(lambda: http_get(port, timeout=0.5) == "page v2", "applied once readable")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT) == 0


# --- env files on the device --------------------------------------------------------------------


def _remove(path: Path) -> str:
    path.unlink()
    return "No such file or directory"


def _directory(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return "Is a directory"


def _fifo(path: Path) -> str:
    path.unlink()
    os.mkfifo(path)  # nobody writes to it: a blocking read would hang the cycle for ever
    return "not a regular file"


def _malformed(path: Path) -> str:
    path.write_text("TOKEN=one\nnot a key value line\n")
    return 'line 2: expected KEY=VALUE, found no "="'


def _too_big(path: Path) -> str:
    path.write_bytes(b"A=" + b"x" * (1024 * 1024) + b"\n")
    return "env file larger than 1048576 bytes"


# Root reads any file whatever its mode, so "unreadable" is provoked as a directory or a FIFO
# in the file's place.
ENV_FAULTS: dict[str, Callable[[Path], str]] = {
    "removed": _remove,
    "unreadable: a directory": _directory,
    "unreadable: a FIFO": _fifo,
    "malformed": _malformed,
    "too big": _too_big,
}


@pytest.mark.parametrize("fault", ENV_FAULTS)
def test_a_broken_env_file_fails_only_its_app_naming_the_file_and_the_rest_goes_ahead(
    lab: DeviceLab, pages: dict[str, str], docker_client: docker.DockerClient, fault: str
):
    env_file = lab.root / "secrets.env"
    env_file.write_text("TOKEN=one\n")
    port, other_port = lab.free_port(), lab.free_port()
    gw = app_manifest("gw", [web(pages["v1"], port, env_file=str(env_file))])
    lab.publish({"gw": gw, "other": app_manifest("other", [web(pages["v1"], other_port)])})
    assert lab.once().code == 0
    (gw_container,) = [c for c in managed(docker_client, lab.namespace) if "_gw_" in c.name]
    expected = ENV_FAULTS[fault](env_file)
    lab.publish({"other": app_manifest("other", [web(pages["v2"], other_port)])})

    run = lab.once()
    shown = lab.status()

    assert run.code == 1, run.out + run.err
    assert f"gw: {env_file}" in run.out and expected in run.out
    assert "Traceback" not in run.err
    assert http_get(other_port) == "page v2"  # the other app went ahead
    assert http_get(port) == "page v1"
    assert gw_container.id in [c.id for c in managed(docker_client, lab.namespace)]
    assert expected in str(shown["last_error"])
    assert "one" not in str(shown["last_error"]).replace(str(env_file), "")

    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        env_file.unlink()
    if env_file.is_dir():
        env_file.rmdir()
    env_file.write_text("TOKEN=two\n")
    again = lab.once()
    assert again.code == 0, again.out + again.err
    assert lab.status()["last_error"] is None


# --- the clock stepped -------------------------------------------------------------------------


@contextlib.contextmanager
def in_process(lab: DeviceLab) -> Iterator[Any]:
    settings = wiring.load_settings(str(lab.config_path))
    with (
        state_store.StateStore(settings.state_dir).lock(),
        wiring.open_device(settings) as dev,
    ):
        yield dev.reconciler


def test_a_clock_stepped_past_expiry_and_back_refuses_then_applies_and_clears_the_refusal(
    lab: DeviceLab, pages: dict[str, str]
):
    now = datetime.now(UTC).replace(microsecond=0)
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])}, now=now)
    lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])}, now=now, expires_in=86400)
    with in_process(lab) as rec:
        assert rec.cycle(now=now - timedelta(hours=1)).result == "converged"
        assert http_get(port) == "page v2"
        lab.publish(
            {"web": app_manifest("web", [web(pages["v3"], port)])}, now=now, expires_in=86400
        )

        ahead = rec.cycle(now=now + timedelta(days=40))  # stepped forward: release expired

        assert ahead.result == "failed" and "expired" in ahead.message
        assert http_get(port) == "page v2"
        refused = status.render(status.report(rec.store.load(), **_where(lab)))
        assert any(line.startswith("last refused release:") for line in refused)

        back = rec.cycle(now=now)  # stepped back: the same release is valid again

        assert back.result == "converged", back.message
        assert http_get(port) == "page v3"
        saved = rec.store.load()
        assert saved.last_verification_failure is None and saved.last_error is None
        lines = status.render(status.report(saved, **_where(lab)))
        assert not any(line.startswith("last refused release:") for line in lines)


def _where(lab: DeviceLab) -> dict[str, Any]:
    return {
        "device": lab.device_name,
        "state_dir": str(lab.state_dir),
        "observed": [],
        "volumes": [],
    }


def test_a_wave_follows_the_clock_back_and_forth_but_an_applied_revision_stays(
    lab: DeviceLab, pages: dict[str, str]
):
    now = datetime.now(UTC).replace(microsecond=0)
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])}, now=now)
    with in_process(lab) as rec:
        assert rec.cycle(now=now).result == "converged"
        staged = app_manifest("web", [web(pages["v2"], port)]).replace(
            "spec:\n", "spec:\n  rollout:\n    waves:\n    - {percent: 100, after: 1h}\n", 1
        )
        lab.publish({"web": staged}, now=now)

        for moment in (now, now - timedelta(days=3), now + timedelta(minutes=59)):
            kept = rec.cycle(now=moment)
            assert kept.result in ("unchanged", "converged"), kept.message
            assert http_get(port) == "page v1", moment

        opened = rec.cycle(now=now + timedelta(hours=2))  # the wave opens
        assert opened.result == "converged", opened.message
        assert http_get(port) == "page v2"

        for moment in (now - timedelta(days=3), now):  # the clock goes back before the wave
            after = rec.cycle(now=moment)
            assert after.result == "unchanged", after.message
            assert http_get(port) == "page v2"


def test_a_clock_step_during_the_health_wait_neither_cuts_it_short_nor_stretches_it(
    lab: DeviceLab, pages: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    lab.write_config(health={"timeout": "30s", "stable_for": "2s"})
    now = datetime.now(UTC).replace(microsecond=0)
    port = lab.free_port()
    lab.publish({"web": app_manifest("web", [web(pages["v1"], port)])}, now=now)
    with in_process(lab) as rec:
        assert rec.cycle(now=now).result == "converged"
        lab.publish({"web": app_manifest("web", [web(pages["v2"], port)])}, now=now)
        real_time, real_apply = time.time, executor.apply
        steps = iter([-86400.0 * 30, 86400.0 * 365, -3600.0])

        def stepping_time() -> float:
            return real_time() + next(steps, 0.0)  # a different step on each read

        def apply_then_step(*args: Any, **kw: Any) -> Any:
            done = real_apply(*args, **kw)
            monkeypatch.setattr(time, "time", stepping_time)  # the health wait comes next
            return done

        monkeypatch.setattr(executor, "apply", apply_then_step)
        started = time.monotonic()
        outcome = rec.cycle(now=now)
        took = time.monotonic() - started
        monkeypatch.setattr(time, "time", real_time)

        assert outcome.result == "converged", outcome.message
        assert 2.0 <= took < 30.0  # stable_for waited out in full, the timeout never hit
        assert http_get(port) == "page v2"
        assert rec.store.load().applied_at == now.strftime("%Y-%m-%dT%H:%M:%SZ")
