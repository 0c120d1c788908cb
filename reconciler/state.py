"""The device's persistent state in `state_dir` (SPEC 3.2 "State"): what is applied, what was
applied before it, which revisions are held back, and the transaction a crash may have left open.

Owns `state_dir/state.json`, the content-addressed manifests `state_dir/manifests/<revision>.yaml`
(so a rollback needs no network) and the single-instance lock `state_dir/lock`. `to_json` and
`from_json` are pure; `StateStore` is the only code here that touches the disk, and every write
is atomic (temp file, fsync, rename, fsync the directory), so a power cut leaves either the old
file or the new one. Must not: talk to Git or the engine, decide what to apply (the cycle does),
or guess at a `schema_version` it does not know.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import logs
from reconciler.errors import Problem, ProblemsError, ReconcilerError

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"
MANIFESTS_DIR = "manifests"
# Leftovers of a write a crash interrupted carry this prefix; only the lock holder removes them.
_TEMP_PREFIX = ".tmp-"
_REVISION = re.compile(r"[0-9a-f]{64}")

_log = logging.getLogger("reconciler.state")


class StateError(ProblemsError):
    """`state.json` is unreadable: malformed, or written by a schema this build does not know."""


class StateLocked(ReconcilerError):
    """Another reconciler holds `state_dir/lock`: one reconciler per state_dir."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{path}: held by {holder}; only one reconciler may use a state_dir")
        self.path = path
        self.pid = pid


@dataclass(frozen=True)
class AppliedApp:
    """One app as applied: its manifest revision and the image ref each container really used."""

    name: str
    path: str
    revision: str
    images: tuple[tuple[str, str], ...] = ()  # (container, image ref)


@dataclass(frozen=True)
class HeldBack:
    """A revision that failed on this device; not tried again until the manifest changes."""

    app: str
    revision: str
    reason: str
    release_version: int
    at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class Transaction:
    """A change in flight: saved before the engine is touched, cleared once it is decided."""

    from_apps: tuple[AppliedApp, ...]
    to_apps: tuple[AppliedApp, ...]
    release_version: int
    commit: str
    started_at: str


@dataclass(frozen=True)
class DeviceState:
    """Everything the device remembers between cycles; `DeviceState()` is a fresh device."""

    schema_version: int = SCHEMA_VERSION
    release_version: int | None = None
    release_digest: str | None = None  # sha256 of the applied release.json bytes
    commit: str | None = None
    applied_at: str | None = None
    apps: tuple[AppliedApp, ...] = ()
    previous_apps: tuple[AppliedApp, ...] = ()  # last good state before `apps`, for rollback
    held_back: tuple[HeldBack, ...] = ()
    pending: Transaction | None = None
    last_fetch: str | None = None
    last_fetch_commit: str | None = None
    last_error: str | None = None
    last_verification_failure: str | None = None


# --- JSON (pure) ---------------------------------------------------------------------------


def to_json(state: DeviceState) -> bytes:
    """Stable, human-readable bytes of `state` (keys in field order, one trailing newline)."""
    doc = {
        "schema_version": state.schema_version,
        "release_version": state.release_version,
        "release_digest": state.release_digest,
        "commit": state.commit,
        "applied_at": state.applied_at,
        "apps": [_app_doc(a) for a in state.apps],
        "previous_apps": [_app_doc(a) for a in state.previous_apps],
        "held_back": [
            {
                "app": h.app,
                "revision": h.revision,
                "reason": h.reason,
                "release_version": h.release_version,
                "at": h.at,
            }
            for h in state.held_back
        ],
        "pending": None if state.pending is None else _transaction_doc(state.pending),
        "last_fetch": state.last_fetch,
        "last_fetch_commit": state.last_fetch_commit,
        "last_error": state.last_error,
        "last_verification_failure": state.last_verification_failure,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _app_doc(app: AppliedApp) -> dict[str, Any]:
    # Pairs, not an object: the tuple round-trips exactly, order and all.
    images = [[container, ref] for container, ref in app.images]
    return {"name": app.name, "path": app.path, "revision": app.revision, "images": images}


def _transaction_doc(tx: Transaction) -> dict[str, Any]:
    return {
        "from_apps": [_app_doc(a) for a in tx.from_apps],
        "to_apps": [_app_doc(a) for a in tx.to_apps],
        "release_version": tx.release_version,
        "commit": tx.commit,
        "started_at": tx.started_at,
    }


def from_json(data: bytes, *, file: str = STATE_FILE) -> DeviceState:
    """Parse `to_json` output; every problem is reported as StateError naming `file`.

    A missing key takes its default (a field added later need not bump the schema), an unknown
    key or an unknown `schema_version` is an error: never guess at a newer writer's meaning.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError([Problem(file, "", f"not valid JSON: {exc}")]) from None
    if not isinstance(doc, dict):
        raise StateError([Problem(file, "", f"expected an object, got {_kind(doc)}")])
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        message = f"unknown schema version {version!r}; this build reads {SCHEMA_VERSION}"
        raise StateError([Problem(file, "schema_version", message)])
    reader = _Reader(file)
    reader.unknown(doc, "", _STATE_KEYS)
    pending_doc = doc.get("pending")
    state = DeviceState(
        schema_version=SCHEMA_VERSION,
        release_version=reader.optional_int(doc, "", "release_version"),
        release_digest=reader.optional_str(doc, "", "release_digest"),
        commit=reader.optional_str(doc, "", "commit"),
        applied_at=reader.optional_str(doc, "", "applied_at"),
        apps=reader.apps(doc, "", "apps"),
        previous_apps=reader.apps(doc, "", "previous_apps"),
        held_back=tuple(
            reader.held_back(item, f"held_back[{i}]")
            for i, item in enumerate(reader.items(doc, "", "held_back"))
        ),
        pending=None if pending_doc is None else reader.transaction(pending_doc, "pending"),
        last_fetch=reader.optional_str(doc, "", "last_fetch"),
        last_fetch_commit=reader.optional_str(doc, "", "last_fetch_commit"),
        last_error=reader.optional_str(doc, "", "last_error"),
        last_verification_failure=reader.optional_str(doc, "", "last_verification_failure"),
    )
    if reader.problems:
        raise StateError(reader.problems)
    return state


_STATE_KEYS = frozenset(
    {
        "schema_version",
        "release_version",
        "release_digest",
        "commit",
        "applied_at",
        "apps",
        "previous_apps",
        "held_back",
        "pending",
        "last_fetch",
        "last_fetch_commit",
        "last_error",
        "last_verification_failure",
    }
)
_APP_KEYS = frozenset({"name", "path", "revision", "images"})
_HELD_KEYS = frozenset({"app", "revision", "reason", "release_version", "at"})
_TX_KEYS = frozenset({"from_apps", "to_apps", "release_version", "commit", "started_at"})


class _Reader:
    """Collects every problem of a document instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.file, where, message))

    def unknown(self, doc: dict[str, Any], where: str, known: frozenset[str]) -> None:
        for key in doc:
            if key not in known:
                self.problem(_join(where, key), "unknown key")

    def optional_str(self, doc: dict[str, Any], where: str, key: str) -> str | None:
        value = doc.get(key)
        if value is None or isinstance(value, str):
            return value
        self.problem(_join(where, key), f"expected a string or null, got {_kind(value)}")
        return None

    def optional_int(self, doc: dict[str, Any], where: str, key: str) -> int | None:
        value = doc.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.problem(_join(where, key), f"expected an integer or null, got {_kind(value)}")
        return None

    def required_str(self, doc: dict[str, Any], where: str, key: str) -> str:
        value = doc.get(key)
        if isinstance(value, str):
            return value
        self.problem(_join(where, key), f"expected a string, got {_kind(value)}")
        return ""

    def required_int(self, doc: dict[str, Any], where: str, key: str) -> int:
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.problem(_join(where, key), f"expected an integer, got {_kind(value)}")
        return 0

    def items(self, doc: dict[str, Any], where: str, key: str) -> list[Any]:
        value = doc.get(key, [])
        if isinstance(value, list):
            return value
        self.problem(_join(where, key), f"expected a list, got {_kind(value)}")
        return []

    def obj(self, value: Any, where: str, known: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(where, f"expected an object, got {_kind(value)}")
            return None
        self.unknown(value, where, known)
        return value

    def apps(self, doc: dict[str, Any], where: str, key: str) -> tuple[AppliedApp, ...]:
        base = _join(where, key)
        return tuple(
            self.app(item, f"{base}[{i}]") for i, item in enumerate(self.items(doc, where, key))
        )

    def app(self, value: Any, where: str) -> AppliedApp:
        doc = self.obj(value, where, _APP_KEYS) or {}
        images: list[tuple[str, str]] = []
        for i, pair in enumerate(self.items(doc, where, "images")):
            ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            if ok:
                images.append((pair[0], pair[1]))
            else:
                self.problem(f"{where}.images[{i}]", "expected [container, image ref]")
        return AppliedApp(
            name=self.required_str(doc, where, "name"),
            path=self.required_str(doc, where, "path"),
            revision=self.required_str(doc, where, "revision"),
            images=tuple(images),
        )

    def held_back(self, value: Any, where: str) -> HeldBack:
        doc = self.obj(value, where, _HELD_KEYS) or {}
        return HeldBack(
            app=self.required_str(doc, where, "app"),
            revision=self.required_str(doc, where, "revision"),
            reason=self.required_str(doc, where, "reason"),
            release_version=self.required_int(doc, where, "release_version"),
            at=self.required_str(doc, where, "at"),
        )

    def transaction(self, value: Any, where: str) -> Transaction:
        doc = self.obj(value, where, _TX_KEYS) or {}
        return Transaction(
            from_apps=self.apps(doc, where, "from_apps"),
            to_apps=self.apps(doc, where, "to_apps"),
            release_version=self.required_int(doc, where, "release_version"),
            commit=self.required_str(doc, where, "commit"),
            started_at=self.required_str(doc, where, "started_at"),
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(
        type(value), type(value).__name__
    )


# --- the store (I/O) -----------------------------------------------------------------------


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
        if not _REVISION.fullmatch(revision):
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
            if p.name.endswith(".yaml") and _REVISION.fullmatch(p.name.removesuffix(".yaml"))
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
