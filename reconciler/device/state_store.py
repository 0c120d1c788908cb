"""The device's state on disk: `state_dir/state.json`, the kept manifests and the
single-instance lock. Every write is atomic (temp file, fsync, rename, fsync the
directory), so a power cut leaves either the old file or the new one. The values and
their JSON codec are `reconciler.core.state`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from reconciler import logs
from reconciler.core import maintenance
from reconciler.core.state import (
    MANIFESTS_DIR,
    REVISION,
    STATE_FILE,
    DeviceState,
    StateError,
    from_json,
    to_json,
)
from reconciler.errors import Problem, ReconcilerError

LOCK_FILE = "lock"
# Leftovers of a write a crash interrupted carry this prefix; only the lock holder removes them.
_TEMP_PREFIX = ".tmp-"

_log = logging.getLogger("reconciler.state")


class StateLocked(ReconcilerError):
    """Another reconciler holds `state_dir/lock`: one reconciler per state_dir."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{path}: held by {holder}; only one reconciler may use a state_dir")
        self.path = path
        self.pid = pid


class StateLock:
    """An exclusive `flock` on `state_dir/lock`, held until `release()` or the `with` block ends.

    Taking it writes nothing once the file exists (it is opened read-only: flock needs no
    write access), so an unchanged `reconciler once` leaves state_dir untouched and a
    read-only state_dir can still be locked. The holder's pid, for the message a second
    instance prints, comes from the kernel's lock table, not from the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise StateLocked(path, pid) from None
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock; the file stays (unlinking it would race with the next holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder_pid(fd: int) -> int | None:
    """The pid holding a flock on the file of `fd`, from /proc/locks (Linux); None if unknown.

    A line reads `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`, the device in hex.
    """
    try:
        info = os.fstat(fd)
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue  # "->" marks a waiter, not the holder
        try:
            major, minor, inode = fields[5].split(":")
            found = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if found == wanted:
            return pid
    return None


class StateStore:
    """`state_dir` on disk. Reads never create anything; the first write creates the directory
    with mode 0700 (it may hold env-file digests and error texts nobody else needs to read)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / STATE_FILE
        self.manifests_dir = self.state_dir / MANIFESTS_DIR

    def load(self) -> DeviceState:
        """The saved state; a fresh `DeviceState()` when nothing was saved yet."""
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return DeviceState()
        return from_json(data, file=str(self.state_path))

    def save(self, state: DeviceState) -> None:
        """Replace the saved state atomically: after a crash either the old or the new is there."""
        self._ensure_dir(self.state_dir)
        _atomic_write(self.state_path, to_json(state))

    # --- the local hold (`reconciler hold`): its own file, so the verbs need no state lock ---

    @property
    def hold_path(self) -> Path:
        return self.state_dir / maintenance.HOLD_FILE

    def load_hold(self) -> maintenance.Hold | None:
        """The saved hold (expired or not), None when there is none; a damaged file raises
        HoldFileError naming it."""
        try:
            data = self.hold_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return maintenance.hold_from_json(data)
        except maintenance.HoldFileError as exc:
            raise maintenance.HoldFileError(f"{self.hold_path}: {exc}") from None

    def save_hold(self, hold: maintenance.Hold) -> None:
        self._ensure_dir(self.state_dir)
        _atomic_write(self.hold_path, maintenance.hold_to_json(hold))

    def clear_hold(self) -> bool:
        """Remove the hold file (damaged or not); True when there was one."""
        try:
            self.hold_path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.state_dir)
        return True

    def lock(self) -> StateLock:
        """Take the single-instance lock (use as `with store.lock():` or call `.release()`).

        Raises StateLocked, naming the holder's pid, when another process has it. Once held,
        temp files a crashed writer left behind are removed: nobody else can be writing.
        """
        self._ensure_dir(self.state_dir)
        held = StateLock(self.state_dir / LOCK_FILE)
        for directory in (self.state_dir, self.manifests_dir):
            _remove_temps(directory)
        return held

    def manifest_path(self, revision: str) -> Path:
        if not REVISION.fullmatch(revision):
            raise ValueError(f"revision: expected 64 lowercase hex digits, got {revision!r}")
        return self.manifests_dir / f"{revision}.yaml"

    def put_manifest(self, revision: str, data: bytes) -> None:
        """Keep a manifest's bytes under its revision; the bytes must hash to it."""
        path = self.manifest_path(revision)
        actual = hashlib.sha256(data).hexdigest()
        if actual != revision:
            message = f"content sha256 is {actual}, not the revision it is stored under"
            raise StateError([Problem(str(path), "", message)])
        if self.get_manifest(revision) is not None:
            return  # content-addressed: an intact copy is already the same bytes
        self._ensure_dir(self.state_dir)
        self._ensure_dir(self.manifests_dir)
        _atomic_write(path, data)

    def get_manifest(self, revision: str) -> bytes | None:
        """The kept bytes of `revision`, re-verified; None when missing or corrupt."""
        try:
            path = self.manifest_path(revision)
        except ValueError:
            return None
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        if hashlib.sha256(data).hexdigest() != revision:
            logs.event(_log, logging.WARNING, "state.manifest_corrupt", path=str(path))
            return None
        return data

    def manifests(self) -> set[str]:
        """Revisions that have a file under `manifests/` (intact or not)."""
        if not self.manifests_dir.is_dir():
            return set()
        return {
            p.name.removesuffix(".yaml")
            for p in self.manifests_dir.iterdir()
            if p.name.endswith(".yaml") and REVISION.fullmatch(p.name.removesuffix(".yaml"))
        }

    def prune_manifests(self, keep: Iterable[str]) -> None:
        """Delete every kept manifest whose revision is not in `keep`."""
        wanted = set(keep)
        removed = False
        for revision in self.manifests() - wanted:
            with contextlib.suppress(FileNotFoundError):
                (self.manifests_dir / f"{revision}.yaml").unlink()
                removed = True
        if removed:
            _fsync_dir(self.manifests_dir)

    @staticmethod
    def _ensure_dir(directory: Path) -> None:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)


# Below this much free space a state.json write (a few KiB, plus its temp copy) is at risk.
LOW_SPACE_BYTES = 64 * 1024


def write_problem(state_dir: Path | str) -> str | None:
    """Why nothing can be written to `state_dir` now (full, or on a read-only file system),
    naming it; None when it looks writable or does not exist yet. For `status`: a daemon that
    cannot save its state cannot save that error either."""
    try:
        info = os.statvfs(state_dir)
    except OSError:
        return None
    if info.f_flag & os.ST_RDONLY:
        return f"state_dir {state_dir} is on a read-only file system: no change can be recorded"
    free = info.f_bavail * info.f_frsize
    if free < LOW_SPACE_BYTES or (info.f_files and info.f_favail == 0):
        return (
            f"state_dir {state_dir} is full ({free} bytes free): state.json cannot be written, "
            "so no change is applied"
        )
    return None


def _atomic_write(target: Path, data: bytes) -> None:
    """mkstemp beside `target` -> write -> fsync -> rename over it -> fsync the directory.

    An OSError (a full or read-only state_dir) is raised naming `target`, whichever step
    failed: a write error of the temp file alone would not say which file could not be saved.
    """
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    # Without this the rename itself may not survive a power cut.
    _fsync_dir(target.parent)


def _write_error(target: Path, exc: OSError) -> OSError:
    reason = exc.strerror or type(exc).__name__
    return OSError(exc.errno, f"cannot write {target}: {reason}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temps(directory: Path) -> None:
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith(_TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
