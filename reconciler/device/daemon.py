"""`reconciler run`: cycles every poll interval until SIGTERM (SPEC 3.3).

Shell. Owns the loop's timing and its wake-ups: the poll interval with jitter; back-off while
every remote is down; SIGHUP or a change to the config file or `device.labels_dir` reloads the
settings and cycles now; a change under a local `source.url` (an air-gapped drop) or SIGUSR1
(`reconciler sync`) cycles now; SIGTERM/SIGINT stop between cycles (a cycle in progress
finishes: it records its transaction, so even a hard kill leaves a state the next run finishes).
A config that became invalid is logged and the last good one kept: the device goes on running.
Must not: run two cycles at once, or leave the pid file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from reconciler import logs, text
from reconciler.core import backoff, settings
from reconciler.device import sdnotify, state_store, wiring
from reconciler.errors import SettingsError

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

_log = logging.getLogger("reconciler.daemon")

PID_FILE = "daemon.pid"  # in state_dir: where `reconciler sync` finds the daemon
ROLLBACK_REQUEST = "rollback.request"  # in state_dir: `reconciler rollback` while we run
SYNC_SIGNAL = signal.SIGUSR1
MAX_BACKOFF_FACTOR = 5  # while the fleet repo is unreachable, wait up to 5 poll intervals
MAX_SLEEP = 86400.0  # longest single select(); a longer wait is several of them


class Wakeups:
    """Why the loop should stop sleeping; set from signal handlers and the watcher thread.

    The loop sleeps in `select` on a socket pair that is also the interpreter's signal wakeup
    fd. The kernel may deliver a signal to any thread (the watcher's, the metrics server's);
    Python runs the handler in the main thread only once that thread runs again, so a plain
    `Event.wait` could sleep through a `sync` for a whole poll interval. The wakeup fd gets a
    byte whichever thread the signal hit, so `select` returns at once.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.stop = False
        self.reload = False
        self.reason = ""

    def close(self) -> None:
        self._read.close()
        self._write.close()

    @property
    def signal_fd(self) -> int:
        return self._write.fileno()

    def wake(self, reason: str, *, reload: bool = False, stop: bool = False) -> None:
        self.reason = self.reason or reason
        self.reload = self.reload or reload
        self.stop = self.stop or stop
        with contextlib.suppress(BlockingIOError, OSError):
            self._write.send(b"\0")  # a full buffer already means "wake up"

    def sleep(self, seconds: float) -> None:
        """Until `seconds` pass or a wake-up with a reason comes, whichever is first."""
        deadline = time.monotonic() + seconds
        while not (self.reason or self.stop):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Capped: select() raises OverflowError on a timeout past what the OS can sleep.
            readable, _, _ = select.select([self._read], [], [], min(left, MAX_SLEEP))
            if readable:
                with contextlib.suppress(BlockingIOError):
                    while self._read.recv(4096):
                        pass
            # A signal's byte can arrive before its Python handler has run: loop, re-check.

    def take(self) -> tuple[str, bool]:
        reason, reload = self.reason or "poll interval", self.reload
        self.reason, self.reload = "", False
        return reason, reload


def run(config_path: str, device_settings: settings.DeviceSettings) -> int:
    """Run until SIGTERM; returns the exit code (0 on a clean stop)."""
    from reconciler.device.metrics import Metrics

    store = state_store.StateStore(device_settings.state_dir)
    wakeups = Wakeups()
    with (
        contextlib.closing(wakeups),
        store.lock(),
        _pid_file(Path(device_settings.state_dir)),
        _signals(wakeups),
    ):
        metrics = Metrics(remotes=wiring.source_urls(device_settings))
        server = metrics.serve(device_settings.metrics.listen)
        watcher = _Watcher(config_path, device_settings, wakeups)
        watcher.start()
        logs.event(
            _log,
            logging.INFO,
            "daemon.start",
            device=device_settings.device.name,
            poll_interval=device_settings.source.poll_interval,
            metrics=f"{server.host}:{server.port}" if server else "off",
        )
        try:
            _loop(config_path, device_settings, metrics, wakeups, watcher)
        finally:
            watcher.stop()
            if server is not None:
                server.shutdown()
    sdnotify.notify("STOPPING=1")
    logs.event(_log, logging.INFO, "daemon.stop")
    return 0


def _loop(
    config_path: str,
    current: settings.DeviceSettings,
    metrics: Metrics,
    wakeups: Wakeups,
    watcher: _Watcher,
) -> None:
    """Cycle, sleep, repeat. The adapters and the Reconciler (its release cache and crash-loop
    back-off) live across cycles and are rebuilt only when the settings change.

    Nothing raised here ends the daemon: a cycle turns every exception into a failed outcome,
    and what fails around it (building the adapters, a rollback request) is logged with its
    traceback, counted as a failed cycle and backed off like an unreachable remote. Only
    SIGTERM/SIGINT end the loop.
    """
    reason = "start"
    ready = False
    crashes = 0  # rounds in a row that failed outside a cycle
    dev: wiring.Device | None = None
    adapters = contextlib.ExitStack()
    try:
        while not wakeups.stop:
            logs.event(_log, logging.INFO, "cycle.start", trigger=reason)
            try:
                if dev is None:
                    dev = adapters.enter_context(wiring.open_device(current, metrics=metrics))
                _round(dev, current)
                crashes = 0
            except Exception as exc:  # the daemon's last net: log, count, back off, go on
                crashes += 1
                _round_failed(exc, metrics)
                adapters.close()  # rebuilt next round, in case they are what broke
                dev = None
            if not ready:  # systemd: started once the first cycle is over, good or bad
                sdnotify.notify("READY=1")
                ready = True
            if current.metrics.pushgateway:
                grouping = {"device": current.device.name}
                metrics.push(current.metrics.pushgateway, "reconciler", grouping)
            failures = max(crashes, dev.reconciler.backoff_failures if dev else 0)
            try:
                wait = _next_wait(current, failures)
            except (OverflowError, ValueError):  # an interval too large to compute with
                wait = MAX_SLEEP
            _sleep_with_watchdog(wakeups, wait)
            if wakeups.stop:
                return
            reason, reload = wakeups.take()
            if reload:
                fresh = _reload(config_path, current)
                if fresh != current:
                    current = fresh
                    try:
                        watcher.update(current)
                    except OSError as exc:  # an unreadable new labels_dir or source path
                        logs.event(_log, logging.ERROR, "watch.failed", reason=str(exc))
                    adapters.close()  # rebuild the adapters on the new settings
                    dev = None
    finally:
        adapters.close()


def _round(dev: wiring.Device, current: settings.DeviceSettings) -> None:
    """One wake-up: a rollback asked for by `reconciler rollback`, then a cycle."""
    request = Path(current.state_dir) / ROLLBACK_REQUEST
    if request.exists():
        logs.event(_log, logging.WARNING, "rollback.requested")
        dev.reconciler.roll_back_by_hand()
        request.unlink(missing_ok=True)
    dev.reconciler.cycle()


def _round_failed(exc: Exception, metrics: Metrics) -> None:
    message = text.one_line(f"{type(exc).__name__}: {exc}")
    logs.event(
        _log,
        logging.ERROR,
        "cycle.crashed",
        what="daemon",
        error=message,
        action="backing off; the next cycle starts afresh",
        exc_info=exc,
    )
    metrics.record_cycle("failed", 0.0)


def _sleep_with_watchdog(wakeups: Wakeups, seconds: float) -> None:
    """Sleep like `wakeups.sleep`, pinging systemd's watchdog often enough on the way: a loop
    that stops pinging (hung in a cycle) gets restarted."""
    interval = sdnotify.watchdog_interval()
    sdnotify.notify("WATCHDOG=1")
    if interval is None:
        wakeups.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while not (wakeups.reason or wakeups.stop):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        wakeups.sleep(min(left, interval))
        sdnotify.notify("WATCHDOG=1")


def _next_wait(current: settings.DeviceSettings, failures: int) -> float:
    interval = current.source.poll_interval
    jitter = current.source.jitter
    if failures:
        return backoff.delay(
            failures,
            initial=interval,
            cap=interval * MAX_BACKOFF_FACTOR,
            jitter=jitter,
        )
    return backoff.jittered(interval, jitter=jitter)


def _reload(config_path: str, current: settings.DeviceSettings) -> settings.DeviceSettings:
    """The new settings, or the current ones when the new config or a labels.d file is
    invalid, unreadable or crashes its parser (logged; `status` reads the same files and
    shows the problem)."""
    try:
        fresh = wiring.load_settings(config_path)
    except SettingsError as exc:
        for problem in exc.problems:
            logs.event(
                _log,
                logging.ERROR,
                "config.invalid",
                problem=str(problem),
                action="kept the previous config",
            )
        return current
    except Exception as exc:  # a parser bug on hostile bytes must not end the daemon
        logs.event(
            _log,
            logging.ERROR,
            "config.invalid",
            problem=wiring.load_failure(config_path, current.device.labels_dir, exc),
            action="kept the previous config",
            exc_info=exc,
        )
        return current
    if fresh.state_dir != current.state_dir:
        logs.event(
            _log,
            logging.ERROR,
            "config.state_dir_changed",
            action="kept the previous state_dir until restart",
        )
        fresh = dataclasses.replace(fresh, state_dir=current.state_dir)
    logs.event(_log, logging.INFO, "config.reloaded", labels=fresh.labels)
    return fresh


@contextlib.contextmanager
def _pid_file(state_dir: Path) -> Iterator[None]:
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


@contextlib.contextmanager
def _signals(wakeups: Wakeups) -> Iterator[None]:
    def stop(signum: int, _frame: FrameType | None) -> None:
        wakeups.wake(signal.Signals(signum).name, stop=True)

    def reload(_signum: int, _frame: FrameType | None) -> None:
        wakeups.wake("SIGHUP", reload=True)

    def sync(_signum: int, _frame: FrameType | None) -> None:
        wakeups.wake("reconciler sync")

    handlers = {
        signal.SIGTERM: stop,
        signal.SIGINT: stop,
        signal.SIGHUP: reload,
        SYNC_SIGNAL: sync,
    }
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    previous_fd = signal.set_wakeup_fd(wakeups.signal_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Watcher:
    """watchfiles on the config file's directory, `labels_dir` and a local source path."""

    def __init__(
        self, config_path: str, current: settings.DeviceSettings, wakeups: Wakeups
    ) -> None:
        self._config = Path(config_path).absolute()
        self._wakeups = wakeups
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets = self._paths(current)

    def _paths(self, current: settings.DeviceSettings) -> dict[Path, str]:
        targets = {self._config.parent: "config"}
        if current.device.labels_dir:
            targets[Path(current.device.labels_dir).absolute()] = "labels"
        source = wiring.local_source_path(current)
        if source is not None:
            targets[source.absolute()] = "source"
        return {path: kind for path, kind in targets.items() if path.exists()}

    def start(self) -> None:
        if not self._targets:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def update(self, current: settings.DeviceSettings) -> None:
        targets = self._paths(current)
        if targets != self._targets:
            self.stop()
            self._targets = targets
            self.start()

    def _watch(self) -> None:
        import watchfiles

        for changes in watchfiles.watch(
            *self._targets, stop_event=self._stop, debounce=300, raise_interrupt=False
        ):
            kinds = {self._kind(Path(changed)) for _change, changed in changes}
            kinds.discard(None)
            if "config" in kinds or "labels" in kinds:
                self._wakeups.wake("config or labels changed", reload=True)
            elif "source" in kinds:
                self._wakeups.wake("local fleet repo changed")

    def _kind(self, changed: Path) -> str | None:
        for root, kind in self._targets.items():
            if kind == "config" and changed != self._config:
                continue  # other files beside the config are not ours
            if changed == root or root in changed.parents:
                return kind
        return None


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
