"""The device's persistent state in `state_dir` (SPEC 3.2 "State"): what is applied, what was
applied before it, which revisions are held back, and the transaction a crash may have left open.

Owns `state_dir/state.json`, the content-addressed manifests `state_dir/manifests/<revision>.yaml`
(so a rollback needs no network) and the single-instance lock `state_dir/lock`. `to_json` and
`from_json` are pure: this module holds values and their codec only; `device.state_store` is
the code that touches the disk. Must not: talk to Git or the engine, decide what to apply (the
cycle does), or guess at a `schema_version` it does not know.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core import _checks
from reconciler.errors import Problem, ProblemsError

SCHEMA_VERSION = 2
# Schema 1 files (before per-app previous revisions and pending revisions) read as schema 2
# with those empty; they are written back as 2 on the next save.
READABLE_VERSIONS = (1, 2)
WAITING_KINDS = ("wave", "window", "hold", "paused", "aborted")
STATE_FILE = "state.json"
MANIFESTS_DIR = "manifests"
REVISION = re.compile(r"[0-9a-f]{64}")

_log = logging.getLogger("reconciler.state")


class StateError(ProblemsError):
    """`state.json` is unreadable: malformed, or written by a schema this build does not know."""


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
class Waiting:
    """A release revision this device does not take yet, and why: `kind` is one of
    WAITING_KINDS (wave, window, hold: it will come; paused: until the fleet resumes it;
    aborted: never), `reason` a sentence for `status`."""

    app: str
    revision: str
    kind: str
    reason: str


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
    # Per app, the revision it ran before its current one (kept with its manifest): where an
    # `abort` of the current revision returns it, whatever other apps did since.
    app_previous: tuple[AppliedApp, ...] = ()
    waiting: tuple[Waiting, ...] = ()  # release revisions not taken yet, for `status`
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
        "held_back": [held_back_doc(h) for h in state.held_back],
        "app_previous": [_app_doc(a) for a in state.app_previous],
        "waiting": [waiting_doc(w) for w in state.waiting],
        "pending": None if state.pending is None else _transaction_doc(state.pending),
        "last_fetch": state.last_fetch,
        "last_fetch_commit": state.last_fetch_commit,
        "last_error": state.last_error,
        "last_verification_failure": state.last_verification_failure,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def held_back_doc(held: HeldBack) -> dict[str, Any]:
    """A held-back revision as state.json and `reconciler status --json` both write it."""
    return {
        "app": held.app,
        "revision": held.revision,
        "reason": held.reason,
        "release_version": held.release_version,
        "at": held.at,
    }


def waiting_doc(waiting: Waiting) -> dict[str, Any]:
    """A pending revision as state.json and `reconciler status --json` both write it."""
    return {
        "app": waiting.app,
        "revision": waiting.revision,
        "kind": waiting.kind,
        "reason": waiting.reason,
    }


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
        raise StateError([Problem(file, "", f"expected an object, got {_checks.show_kind(doc)}")])
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        readable = " and ".join(map(str, READABLE_VERSIONS))
        message = f"unknown schema version {version!r}; this build reads {readable}"
        raise StateError([Problem(file, "schema_version", message)])
    reader = _Reader(file)
    reader.unknown(doc, "", _STATE_KEYS if version == SCHEMA_VERSION else _STATE_KEYS_V1)
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
        app_previous=reader.apps(doc, "", "app_previous"),
        waiting=tuple(
            reader.waiting(item, f"waiting[{i}]")
            for i, item in enumerate(reader.items(doc, "", "waiting"))
        ),
        pending=None if pending_doc is None else reader.transaction(pending_doc, "pending"),
        last_fetch=reader.optional_str(doc, "", "last_fetch"),
        last_fetch_commit=reader.optional_str(doc, "", "last_fetch_commit"),
        last_error=reader.optional_str(doc, "", "last_error"),
        last_verification_failure=reader.optional_str(doc, "", "last_verification_failure"),
    )
    if reader.problems:
        raise StateError(reader.problems)
    if version == 1:
        state = replace(state, app_previous=_history_of_v1(state))
    return state


def _history_of_v1(state: DeviceState) -> tuple[AppliedApp, ...]:
    """Per-app previous revisions a schema 1 file implies: the apps whose revision changed in
    the last applied change (its `previous_apps`), so an abort right after an upgrade still
    finds where to return."""
    running = {a.name: a.revision for a in state.apps}
    return tuple(
        sorted(
            (a for a in state.previous_apps if running.get(a.name) not in (None, a.revision)),
            key=lambda a: a.name,
        )
    )


_STATE_KEYS_V1 = frozenset(
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
_STATE_KEYS = _STATE_KEYS_V1 | {"app_previous", "waiting"}
_WAITING_KEYS = frozenset({"app", "revision", "kind", "reason"})
_APP_KEYS = frozenset({"name", "path", "revision", "images"})
_HELD_KEYS = frozenset({"app", "revision", "reason", "release_version", "at"})
_TX_KEYS = frozenset({"from_apps", "to_apps", "release_version", "commit", "started_at"})


class _Reader:
    """Typed reads of state.json's fields, every problem collected (not just the first) in a
    `_checks.Report` with the state wording."""

    def __init__(self, file: str) -> None:
        self.report = _checks.Report(file, _checks.STATE_WORDING)

    @property
    def problems(self) -> list[Problem]:
        return self.report.problems

    def unknown(self, doc: dict[str, Any], where: str, known: frozenset[str]) -> None:
        self.report.fields(where, doc, allowed=sorted(known))

    def optional_str(self, doc: dict[str, Any], where: str, key: str) -> str | None:
        value = doc.get(key)
        if value is None or isinstance(value, str):
            return value
        self.report.expected(self.report.at(where, key), "a string or null", value)
        return None

    def optional_int(self, doc: dict[str, Any], where: str, key: str) -> int | None:
        value = doc.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.report.expected(self.report.at(where, key), "an integer or null", value)
        return None

    def required_str(self, doc: dict[str, Any], where: str, key: str) -> str:
        value = doc.get(key)
        if isinstance(value, str):
            return value
        self.report.expected(self.report.at(where, key), "a string", value)
        return ""

    def required_int(self, doc: dict[str, Any], where: str, key: str) -> int:
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.report.expected(self.report.at(where, key), "an integer", value)
        return 0

    def items(self, doc: dict[str, Any], where: str, key: str) -> list[Any]:
        value = doc.get(key, [])
        if isinstance(value, list):
            return value
        self.report.expected(self.report.at(where, key), "a list", value)
        return []

    def obj(self, value: Any, where: str, known: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report.expected(where, "an object", value)
            return None
        self.unknown(value, where, known)
        return value

    def apps(self, doc: dict[str, Any], where: str, key: str) -> tuple[AppliedApp, ...]:
        base = self.report.at(where, key)
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
                self.report.add(f"{where}.images[{i}]", "expected [container, image ref]")
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

    def waiting(self, value: Any, where: str) -> Waiting:
        doc = self.obj(value, where, _WAITING_KEYS) or {}
        found = Waiting(
            app=self.required_str(doc, where, "app"),
            revision=self.required_str(doc, where, "revision"),
            kind=self.required_str(doc, where, "kind"),
            reason=self.required_str(doc, where, "reason"),
        )
        if doc and found.kind not in WAITING_KINDS:
            self.report.add(f"{where}.kind", f"expected one of {', '.join(WAITING_KINDS)}")
        return found

    def transaction(self, value: Any, where: str) -> Transaction:
        doc = self.obj(value, where, _TX_KEYS) or {}
        return Transaction(
            from_apps=self.apps(doc, where, "from_apps"),
            to_apps=self.apps(doc, where, "to_apps"),
            release_version=self.required_int(doc, where, "release_version"),
            commit=self.required_str(doc, where, "commit"),
            started_at=self.required_str(doc, where, "started_at"),
        )
