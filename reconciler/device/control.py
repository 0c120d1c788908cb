"""Reaching a running daemon from other verbs: its pid file, `sync` and `rollback` requests.

Shell: the daemon writes `state_dir/daemon.pid` while it runs; `reconciler sync` signals it,
`reconciler rollback` leaves a request file and signals it. Must not: touch the engine or
state.json (the daemon does, under its lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from reconciler import logs

_log = logging.getLogger("reconciler.daemon")

PID_FILE = "daemon.pid"  # in state_dir: where `reconciler sync` finds the daemon
ROLLBACK_REQUEST = "rollback.request"  # in state_dir: `reconciler rollback` while we run
SYNC_SIGNAL = signal.SIGUSR1


@contextlib.contextmanager
def pid_file(state_dir: Path) -> Iterator[None]:
    """`state_dir/daemon.pid` while the daemon runs. A full or read-only state_dir only costs
    `reconciler sync` and `rollback` their way to the daemon: it runs on regardless."""
    path = state_dir / PID_FILE
    try:
        path.write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        logs.event(
            _log,
            logging.ERROR,
            "daemon.pid_file_failed",
            path=str(path),
            reason=exc.strerror or str(exc),
            action="running without it: reconciler sync and rollback cannot reach this daemon",
        )
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def request_rollback(state_dir: str) -> str | None:
    """Ask the daemon of `state_dir` to roll back by hand before its next cycle."""
    request = Path(state_dir) / ROLLBACK_REQUEST
    request.write_text("rollback\n", encoding="ascii")
    problem = send_sync(state_dir)
    if problem:
        request.unlink(missing_ok=True)
    return problem


def running_pid(state_dir: str) -> int | None:
    """The pid of the daemon running for `state_dir`, or None when none is."""
    try:
        pid = int((Path(state_dir) / PID_FILE).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid  # alive, only not ours to signal
    except OSError:
        return None
    return pid


def send_sync(state_dir: str) -> str | None:
    """Ask the daemon of `state_dir` to cycle now; None on success, else why not."""
    path = Path(state_dir) / PID_FILE
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return f"no daemon is running for {state_dir} (no readable {path})"
    try:
        os.kill(pid, SYNC_SIGNAL)
    except ProcessLookupError:
        return f"no daemon is running for {state_dir} (process {pid} from {path} is gone)"
    except PermissionError:
        return f"not allowed to signal the daemon (process {pid}); run as its user"
    return None
