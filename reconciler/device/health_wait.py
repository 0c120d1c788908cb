"""The health wait: inspects, probes and runs host commands until `core.health_rules` decides.

Owns: `wait_healthy`, the loop `cycle` calls after applying (inspect every `POLL_INTERVAL`,
probe each check at its own interval, run `health.commands` when the rules ask, sleep), and the
probes themselves. Every decision (what an observation means, when an app passes or fails, what
the reason says) is `health_rules`'; this module only gathers observations and times for it.

Probes: `http` GETs the published host port (`http.client`, one request, no redirects); `tcp`
connects and then waits `TCP_LINGER` to see the connection is not closed at once (Docker's
userland proxy accepts on the host port and then closes when nothing listens in the container,
so a bare connect would always pass); `exec` runs in the container through the engine (bounded
by the adapter); `docker` needs no probe (the inspect carries the HEALTHCHECK status). Host
commands run as argv in their own session, so a timeout kills their children too.

Must not: import `docker` (probes go through `HealthEngine`), follow redirects or HTTP proxies
(`http.client`, not urllib: a device's HTTP_PROXY must not route loopback checks), run host
commands through a shell, or decide health itself.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

from reconciler import errors, logs
from reconciler.core.health_rules import (
    DUE_SLACK,
    HealthWatch,
    Observation,
    ProbeResult,
    Target,
    Verdict,
    probe_host,
    request_path,
)
from reconciler.core.settings import HealthSettings
from reconciler.ports import HealthEngine

# The logger keeps the name it had before the split: log filters select on logger names.
_log = logging.getLogger("reconciler.health")

PROBE_TIMEOUT = 2.0  # one http/tcp probe; no answer within it is a failed probe
POLL_INTERVAL = 0.25  # between inspects of the containers; probes follow each check's interval
# How long a tcp probe waits to see whether the connection is closed at once (userland proxy
# with nothing listening behind it closes within milliseconds of the accept).
TCP_LINGER = 0.2
MIN_COMMAND_TIMEOUT = 1.0  # a host command near the deadline still gets a fair chance
_REASON_TAIL = 200  # characters of a host command's stderr kept in the reason


def wait_healthy(
    engine: HealthEngine,
    targets: Sequence[Target],
    settings: HealthSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = POLL_INTERVAL,
) -> Verdict:
    """Wait until every app in `targets` is healthy or certainly not, at most `settings.timeout`.

    Containers are inspected every `poll` seconds (sooner when a probe falls due); each check is
    probed at its own `interval`. Probes run one after another; each http/tcp probe and host
    command is bounded (`PROBE_TIMEOUT`, the time left), an `exec` check by the engine adapter.
    """
    started = clock()
    deadline = started + settings.timeout
    watch = HealthWatch(targets, settings, started=started)
    while not watch.done:
        for target in watch.to_observe():
            _observe(engine, watch, target, clock=clock, deadline=deadline)
        if watch.end_round():
            left = max(deadline - clock(), MIN_COMMAND_TIMEOUT)
            watch.host_checks(run_host_commands(settings.commands, timeout=left))
        now = clock()
        if watch.done:
            break
        if now >= deadline:
            watch.expire(settings.timeout)
            break
        wake = min(now + poll, deadline)
        due = watch.next_probe()
        if due is not None and due > now:  # one overdue (engine unreachable) waits a poll
            wake = min(wake, due)
        sleep(max(wake - now, DUE_SLACK))
    seconds = clock() - started
    for app in watch.passed:
        logs.event(_log, logging.INFO, "health.passed", app=app, seconds=round(seconds, 2))
    for app, reason in watch.failed.items():
        logs.event(_log, logging.WARNING, "health.failed", app=app, reason=reason)
    return Verdict(failed=dict(watch.failed), seconds=seconds)


def _observe(
    engine: HealthEngine,
    watch: HealthWatch,
    target: Target,
    *,
    clock: Callable[[], float],
    deadline: float,
) -> None:
    try:
        info = engine.inspect_health(target.container_id)
    except errors.EngineError as exc:
        watch.unreachable(target, f"cannot inspect: {exc}")
        return
    probe = None
    if (
        info.status == "running"
        and target.spec.health is not None
        and watch.probe_due(target, clock())
    ):
        timeout = min(PROBE_TIMEOUT, max(deadline - clock(), 0.1))
        probe = run_probe(engine, target, timeout=timeout)
    watch.observe(target, Observation.from_info(info, probe), clock())


def run_probe(engine: HealthEngine, target: Target, *, timeout: float) -> ProbeResult | None:
    """Run the container's http/tcp/exec check once; None for `docker` (inspect carries it)."""
    check = target.spec.health
    if check is None or check.kind == "docker":
        return None
    if check.kind == "exec":
        try:
            code = engine.exec_run(target.container_id, check.command)
        except errors.EngineError as exc:
            return ProbeResult(ok=False, detail=f"could not run: {exc}", counts=False)
        if code is None:
            return ProbeResult(ok=False, detail="timed out (still running)")
        return ProbeResult(ok=code == 0, detail=f"exited {code}")
    port = check.port or 0
    host = probe_host(target.spec, port)
    if check.kind == "http":
        return probe_http(host, port, check.path, timeout=timeout)
    return probe_tcp(host, port, timeout=timeout)


def probe_http(host: str, port: int, path: str, *, timeout: float) -> ProbeResult:
    """GET http://host:port/path; 200..399 passes. No redirects followed, no proxy used."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", request_path(path), headers={"Connection": "close"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(ok=False, detail=_describe_io_error(exc, timeout))
    finally:
        connection.close()
    return ProbeResult(ok=200 <= status <= 399, detail=f"answered {status}")


def probe_tcp(host: str, port: int, *, timeout: float) -> ProbeResult:
    """Connect, then make sure the connection is not closed at once (see the module docstring)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(min(TCP_LINGER, timeout))
            try:
                first = connection.recv(1)
            except TimeoutError:
                return ProbeResult(ok=True, detail="accepts connections")
            if first:
                return ProbeResult(ok=True, detail="accepts connections (sent a greeting)")
            return ProbeResult(
                ok=False,
                detail="connection closed at once (nothing listens behind the published port)",
            )
    except OSError as exc:
        return ProbeResult(ok=False, detail=_describe_io_error(exc, timeout))


def run_host_commands(commands: Sequence[Sequence[str]], *, timeout: float) -> str | None:
    """Run the device-level checks in order, no shell; None when all exit 0, else the reason
    naming the first that did not (its exit code and the tail of its stderr)."""
    for argv in commands:
        failure = _run_host_command(argv, timeout=timeout)
        if failure is not None:
            return f"host check {list(argv)!r} {failure}"
    return None


def _run_host_command(argv: Sequence[str], *, timeout: float) -> str | None:
    try:
        # Own session, so a timeout kills the command's children too, not just the command.
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return f"could not start: {exc.strerror or exc}"
    with process:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            # A grandchild that left the session could hold stderr open: do not wait on it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=1.0)
            return f"timed out after {timeout:.1f} s"
    if process.returncode == 0:
        return None
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
    said = f": {tail[0][:_REASON_TAIL]}" if tail else ""
    return f"exited {process.returncode}{said}"


def _describe_io_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:.1f} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    return f"{type(exc).__name__}: {exc}"
