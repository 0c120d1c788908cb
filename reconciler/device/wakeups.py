"""Why the daemon's loop wakes up: the poll interval, signals, and watched files.

Shell: a `select` on a socket pair that is also the interpreter's signal wakeup fd, so a
signal wakes the loop at once whichever thread it hit; SIGTERM/SIGINT stop, SIGHUP reloads,
SIGUSR1 (`reconciler sync`) cycles now; watchfiles on the config file's directory,
`device.labels_dir` and a local source path. Must not: run a cycle itself.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from reconciler.core import settings
from reconciler.device import wiring
from reconciler.device.control import SYNC_SIGNAL

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


@contextlib.contextmanager
def handling_signals(wakeups: Wakeups) -> Iterator[None]:
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


class Watcher:
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
