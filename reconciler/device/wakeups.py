"""Why the daemon's loop wakes up: the poll interval, signals, and watched files.

Shell: a `select` on a socket pair that is also the interpreter's signal wakeup fd, so a
signal wakes the loop at once whichever thread it hit; SIGTERM/SIGINT stop, SIGHUP reloads,
SIGUSR1 (`reconciler sync`) cycles now; watchfiles on the config file's directory,
`device.labels_dir` and every local source and mirror directory, including one not there yet
(a USB stick not inserted). Must not: run a cycle itself, or read or write state_dir.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

from reconciler import logs
from reconciler.core import settings
from reconciler.device import wiring
from reconciler.device.control import SYNC_SIGNAL

MAX_SLEEP = 86400.0  # longest single select(); a longer wait is several of them
TICK = 0.5  # how often a missing or remounted local source is looked for
SOURCE_QUIET = 1.0  # a source quiet this long after a change is read: a copy has finished
WATCH_RETRY = 2.0  # a watch that failed is set up again after this

_log = logging.getLogger("reconciler.daemon")


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


def local_source_dirs(current: settings.DeviceSettings) -> tuple[Path, ...]:
    """Every `source.url` and mirror that is a local directory or file URL, absolute: a local
    fleet repo, an air-gapped drop, a published tree on removable media. A URL with a host, or
    (for Git) scp-like `host:path`, is not one."""
    found: list[Path] = []
    for url in wiring.source_urls(current):
        if url.lower().startswith("file://"):
            path = Path(unquote(urlsplit(url).path))
        elif "://" in url:
            continue
        elif current.source.kind != "static" and ":" in url.split("/", 1)[0]:
            continue  # git's scp-like [user@]host:path; a static tree never reads one so
        else:
            path = Path(url)
        if path.absolute() not in found:
            found.append(path.absolute())
    return tuple(found)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which directory `path` is now (device and inode), None while there is none: it changes
    when a stick is mounted on it, inserted, removed or the directory is replaced, none of
    which an inotify watch on what was there before reports."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class Watcher:
    """watchfiles on the config file's directory, `labels_dir` and every local source directory.

    A local source or mirror that is not there yet (a stick not inserted, a drop not copied) is
    looked for on every tick (one `stat` each), as is a change of which directory a path is (a
    mount on it): then the watch restarts on what is there now. A change under a source wakes
    the loop once the source has been quiet for SOURCE_QUIET, so a copy in progress is read
    when it is done (and `reconciler publish` writes `latest.json` last, so a cycle that still
    comes early reads the old tree or none, which is a fetch failure, not a refusal).
    """

    def __init__(
        self, config_path: str, current: settings.DeviceSettings, wakeups: Wakeups
    ) -> None:
        self._config = Path(config_path).absolute()
        self._wakeups = wakeups
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wanted = self._want(current)
        self._source_changed: float | None = None  # monotonic time of the last source change

    def _want(self, current: settings.DeviceSettings) -> tuple[Path | None, tuple[Path, ...]]:
        labels = current.device.labels_dir
        return (Path(labels).absolute() if labels else None), local_source_dirs(current)

    @property
    def sources(self) -> tuple[Path, ...]:
        return self._wanted[1]

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def update(self, current: settings.DeviceSettings) -> None:
        wanted = self._want(current)
        if wanted != self._wanted:
            self.stop()
            self._wanted = wanted
            self.start()

    def _run(self) -> None:
        """Watch what is there; start again whenever a source directory comes, goes or is
        replaced, until stopped. A watch that breaks is tried again after WATCH_RETRY, logged
        once per reason (a directory it cannot read stays so: one line, not one a second)."""
        failed = ""
        while not self._stop.is_set():
            seen = {path: _identity(path) for path in self.sources}
            try:
                self._watch(seen)
            except Exception as exc:  # a path gone between the stat and the watch, no inotify
                reason = f"{type(exc).__name__}: {exc}"
                if reason != failed:
                    logs.event(_log, logging.WARNING, "watch.failed", reason=reason)
                    failed = reason
                self._stop.wait(WATCH_RETRY)
            else:
                failed = ""

    def _targets(self, seen: dict[Path, tuple[int, int] | None]) -> dict[Path, str]:
        labels, _sources = self._wanted
        targets = {self._config.parent: "config"}
        if labels is not None:
            targets[labels] = "labels"
        targets.update({path: "source" for path, identity in seen.items() if identity})
        return {path: kind for path, kind in targets.items() if path.exists()}

    def _watch(self, seen: dict[Path, tuple[int, int] | None]) -> None:
        """One watch over what `seen` found; returns when a source directory changed identity."""
        import watchfiles

        targets = self._targets(seen)
        sources = [path for path, kind in targets.items() if kind == "source"]
        editors = watchfiles.DefaultFilter()  # swap files, backups, .git and the like

        def relevant(change: watchfiles.Change, changed: str) -> bool:
            """Under a source every change (a local Git repo moves under .git); elsewhere
            not what an editor leaves beside the config or a label file."""
            path = Path(changed)
            return any(path == s or s in path.parents for s in sources) or editors(change, changed)

        ticking = bool(self.sources)
        changes_seen = (
            watchfiles.watch(
                *targets,
                watch_filter=relevant,
                stop_event=self._stop,
                debounce=300,
                rust_timeout=int(TICK * 1000) if ticking else 5000,
                yield_on_timeout=ticking,
                raise_interrupt=False,
            )
            if targets
            else _ticks(self._stop)
        )
        for changes in changes_seen:
            kinds = {self._kind(Path(changed), targets) for _change, changed in changes}
            if "config" in kinds or "labels" in kinds:
                self._wakeups.wake("config or labels changed", reload=True)
            if "source" in kinds:
                self._source_changed = time.monotonic()
            now = {path: _identity(path) for path in seen}
            if now != seen:
                if any(identity and identity != seen[path] for path, identity in now.items()):
                    self._source_changed = time.monotonic()  # a stick came: read it when quiet
                else:
                    self._source_changed = None  # one went: nothing new to read
                return
            self._wake_when_quiet()

    def _wake_when_quiet(self) -> None:
        changed = self._source_changed
        if changed is not None and time.monotonic() - changed >= SOURCE_QUIET:
            self._source_changed = None
            self._wakeups.wake("local fleet source changed")

    def _kind(self, changed: Path, targets: dict[Path, str]) -> str | None:
        for root, kind in targets.items():
            if kind == "config" and changed != self._config:
                continue  # other files beside the config are not ours
            if changed == root or root in changed.parents:
                return kind
        return None


def _ticks(stop: threading.Event) -> Iterator[set[tuple[object, str]]]:
    """No change every TICK until `stop`: the watch's shape when nothing is there to watch."""
    while not stop.wait(TICK):
        yield set()
