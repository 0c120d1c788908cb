"""The signed release snapshot `.fleet/release.json` (SPEC 2.2): build, serialize, parse, check.

Owns the file's shape and the pure rules around it: which manifest bytes a release pins, when an
app's `since` carries over, the signed rollout control of each app (`paused`, `abort`: SPEC 2.3),
version succession (rollback and equivocation refused) and expiry.
Pure: bytes and values in, values out. It must not read Git, verify signatures (the
ReleaseVerifier port does, `adapters.sigstore_verifier`) or decide what runs where (`desired`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from reconciler import errors
from reconciler.core import _checks, labels
from reconciler.core._checks import json_kind, show_json_literal
from reconciler.text import utc_time

SCHEMA = "reconciler/release/v1"
RELEASE_PATH = ".fleet/release.json"
BUNDLE_PATH = ".fleet/release.json.sigstore.json"

MAX_BYTES = 4 * 1024 * 1024  # thousands of apps fit; a hostile mirror cannot make us load more
DEFAULT_EXPIRES_IN = 30 * 24 * 3600.0
MAX_VERSION = 2**63 - 1  # state files and metrics carry it as a 64-bit integer

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # ASCII digits only
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = frozenset({"schema", "version", "created", "expires", "source_commit", "apps"})
_APP_KEYS = frozenset({"sha256", "since", "images", "paused", "abort"})
_MAX_TEXT = 1024  # source_commit and image refs: generous, but bounded in logs and state

_Report = Callable[[str, str], None]  # (field, message) -> records a problem


@dataclass(frozen=True)
class AppPin:
    """One pinned manifest: its bytes' sha256, when this sha256 was first released, the
    image refs resolved at release time (container name -> ref, sorted; empty when unresolved)
    and the rollout control carried from `.fleet/rollout.yaml` (SPEC 2.3): `paused` (devices not
    yet on this revision keep what they run) and `abort` (a full revision of this app: devices
    running it return to their previous revision and hold it back; others never take it)."""

    sha256: str
    since: datetime
    images: tuple[tuple[str, str], ...] = ()
    paused: bool = False
    abort: str | None = None


@dataclass(frozen=True)
class Release:
    """A parsed release; `apps` is sorted by manifest path."""

    version: int
    created: datetime
    expires: datetime
    source_commit: str
    apps: tuple[tuple[str, AppPin], ...]

    @property
    def pins(self) -> dict[str, AppPin]:
        """Manifest path -> pin."""
        return dict(self.apps)

    @property
    def since(self) -> dict[str, datetime]:
        """Manifest path -> `since`, the shape `desired.decide` takes."""
        return {path: pin.since for path, pin in self.apps}

    @property
    def pinned_images(self) -> dict[str, dict[str, str]]:
        """Manifest path -> {container: image ref}, only for apps with resolved images."""
        return {path: dict(pin.images) for path, pin in self.apps if pin.images}


def digest(data: bytes) -> str:
    """sha256 hex of some bytes: a manifest's revision, or a release file's identity."""
    return hashlib.sha256(data).hexdigest()


def build(
    files: Mapping[str, bytes],
    *,
    previous: Release | None,
    now: datetime,
    source_commit: str,
    expires_in: float = DEFAULT_EXPIRES_IN,
    images: Mapping[str, Mapping[str, str]] | None = None,
    paused: Collection[str] = (),
    abort: Mapping[str, str] | None = None,
) -> Release:
    """The next release pinning `files` (manifest path -> bytes).

    Raises ReleaseError when a path, image ref, abort revision or `source_commit` would make a
    file devices refuse, so a bad release fails in CI and is never signed. `images`, `paused`
    (the paused apps) and `abort` (path -> full revision to abort) are keyed by manifest path.
    """
    created = _utc(now).replace(microsecond=0)
    if expires_in < 1:
        raise ValueError(f"expires_in must be at least one second, got {expires_in}")
    # Whole seconds: the file has no fractions, and build -> serialize -> parse must round-trip.
    expires = created + timedelta(seconds=int(expires_in))
    images = images or {}
    abort = abort or {}
    problems = _text_problems(source_commit, "source_commit")
    for path in sorted(set(images) - set(files)):
        problems.append(_problem(f"images[{_q(path)}]", "images given for a file not released"))
    for path in sorted(set(paused) - set(files)):
        problems.append(_problem(f"paused[{_q(path)}]", "paused given for a file not released"))
    for path in sorted(set(abort) - set(files)):
        problems.append(_problem(f"abort[{_q(path)}]", "abort given for a file not released"))
    apps = []
    old = previous.pins if previous else {}
    for path in sorted(files):
        field = f"apps[{_q(path)}]"
        problems += [_problem(field, m) for m in _path_problems(path)]
        pinned = tuple(sorted(images.get(path, {}).items()))
        for container, ref in pinned:
            problems += _image_problems(container, ref, f"{field}.images")
        sha = digest(files[path])
        before = old.get(path)
        # `since` marks when this exact manifest was first released: rollout waves count from it.
        since = before.since if before is not None and before.sha256 == sha else created
        aborted = abort.get(path)
        if aborted is not None and not _SHA256.fullmatch(aborted):
            problems.append(_problem(f"{field}.abort", _abort_message(aborted)))
        apps.append(
            (
                path,
                AppPin(
                    sha256=sha, since=since, images=pinned, paused=path in paused, abort=aborted
                ),
            )
        )
    if problems:
        raise errors.ReleaseError(problems)
    return Release(
        version=previous.version + 1 if previous else 1,
        created=created,
        expires=expires,
        source_commit=source_commit,
        apps=tuple(apps),
    )


def serialize(release: Release) -> bytes:
    """The exact bytes that are signed: same release, same bytes (sorted keys, fixed layout)."""
    apps: dict[str, dict[str, Any]] = {}
    for path, pin in release.apps:
        entry: dict[str, Any] = {"sha256": pin.sha256, "since": utc_time(pin.since)}
        if pin.images:
            entry["images"] = dict(pin.images)
        # Written only when set: a release without rollout control keeps its exact old bytes.
        if pin.paused:
            entry["paused"] = True
        if pin.abort is not None:
            entry["abort"] = pin.abort
        apps[path] = entry
    body = {
        "schema": SCHEMA,
        "version": release.version,
        "created": utc_time(release.created),
        "expires": utc_time(release.expires),
        "source_commit": release.source_commit,
        "apps": apps,
    }
    return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode("ascii")


def parse(data: bytes, *, file: str = RELEASE_PATH) -> Release:
    """Strictly parse release bytes; every problem is reported in one ReleaseError."""
    if len(data) > MAX_BYTES:
        raise errors.ReleaseError(
            [errors.Problem(file, "", f"is {len(data)} bytes, over the {MAX_BYTES} byte limit")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise errors.ReleaseError([errors.Problem(file, "", f"is not UTF-8: {e}")]) from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        # ValueError: JSONDecodeError, duplicate keys, NaN, integers past Python's digit limit.
        raise errors.ReleaseError([errors.Problem(file, "", f"is not valid JSON: {e}")]) from None
    if not isinstance(doc, dict):
        raise errors.ReleaseError(
            [errors.Problem(file, "", f"expected a JSON object, got {json_kind(doc)}")]
        )
    return _release_from(doc, file)


def check_pins(release: Release, files: Mapping[str, bytes]) -> list[errors.Problem]:
    """Compare pinned sha256s with the files read at the release's commit (path -> bytes).

    Files the release does not list are no problem: they are ignored by design, since the
    release is the whole fleet state (see `unlisted` to report them).
    """
    problems = []
    for path, pin in release.apps:
        data = files.get(path)
        if data is None:
            problems.append(
                errors.Problem(path, "", f"is pinned by {RELEASE_PATH} but missing at this commit")
            )
        elif (actual := digest(data)) != pin.sha256:
            problems.append(
                errors.Problem(
                    path,
                    "",
                    f"sha256 {actual[:12]} does not match {pin.sha256[:12]} pinned by "
                    f"{RELEASE_PATH}: changed after the release was signed",
                )
            )
    return problems


def unlisted(release: Release, paths: Iterable[str]) -> tuple[str, ...]:
    """The paths the release does not pin, sorted: never applied, worth a note in `verify`."""
    return tuple(sorted(set(paths) - {path for path, _ in release.apps}))


def check_succession(
    *,
    applied_version: int | None,
    applied_digest: str | None,
    new_version: int,
    new_digest: str,
) -> None:
    """Refuse a release older than the applied one, or another release with the same version.

    No applied version (first run) accepts anything. The digests are `digest(release bytes)`.
    """
    if applied_version is None:
        return
    if new_version < applied_version:
        raise errors.VerificationError(
            f"{RELEASE_PATH}: version {new_version} is lower than the applied version "
            f"{applied_version}: refusing a rollback",
            reason="rollback",
        )
    if (
        new_version == applied_version
        and applied_digest is not None
        and new_digest != applied_digest
    ):
        raise errors.VerificationError(
            f"{RELEASE_PATH}: version {new_version} has sha256 {new_digest[:12]} but the applied "
            f"release of that version has {applied_digest[:12]}: refusing an equivocation",
            reason="equivocation",
        )


def is_expired(release: Release, now: datetime) -> bool:
    """True once `expires` is reached: no new applies, running apps untouched (SPEC 2.2)."""
    return release.expires <= _utc(now)


# --- parsing helpers -------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Signed bytes must mean one thing: parsers disagree on which duplicate wins.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_q(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _release_from(doc: dict[str, Any], file: str) -> Release:
    report = _checks.Report(file, _checks.RELEASE_WORDING)
    bad = report.add

    for key in sorted(set(doc) - _TOP_KEYS):
        bad(key, "unknown key")
    for key in sorted(_TOP_KEYS - set(doc)):
        bad(key, "missing")
    if "schema" in doc and doc["schema"] != SCHEMA:
        report.expected("schema", _q(SCHEMA), doc["schema"])
    version = doc.get("version")
    if "version" in doc and (
        not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= MAX_VERSION
    ):
        report.expected("version", "a positive integer", version)
    created = _time(doc, "created", "created", bad)
    expires = _time(doc, "expires", "expires", bad)
    if created and expires and expires <= created:
        bad("expires", "must be after created")
    source_commit = doc.get("source_commit")
    if "source_commit" in doc:
        for p in _text_problems(source_commit, "source_commit"):
            bad(p.field, p.message)
    apps: list[tuple[str, AppPin]] = []
    raw_apps = doc.get("apps")
    if "apps" in doc and not isinstance(raw_apps, dict):
        bad("apps", f"expected an object of manifest path -> pin, got {json_kind(raw_apps)}")
    elif isinstance(raw_apps, dict):
        for path in sorted(raw_apps):
            pin = _pin_from(path, raw_apps[path], bad)
            if pin is not None:
                apps.append((path, pin))
    if report.problems:
        raise errors.ReleaseError(report.problems)
    # No problems means every field was checked above: the casts only tell the type checker.
    return Release(
        version=cast(int, version),
        created=cast(datetime, created),
        expires=cast(datetime, expires),
        source_commit=cast(str, source_commit),
        apps=tuple(apps),
    )


def _pin_from(path: str, raw: object, bad: _Report) -> AppPin | None:
    field = f"apps[{_q(path)}]"
    ok = True
    for message in _path_problems(path):
        bad(field, message)
        ok = False
    if not isinstance(raw, dict):
        bad(field, f"expected an object with sha256 and since, got {json_kind(raw)}")
        return None
    for key in sorted(set(raw) - _APP_KEYS):
        bad(f"{field}.{key}", "unknown key")
        ok = False
    for key in ("sha256", "since"):
        if key not in raw:
            bad(f"{field}.{key}", "missing")
            ok = False
    sha = raw.get("sha256")
    if "sha256" in raw and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        bad(
            f"{field}.sha256",
            f"expected 64 lower-case hex digits, got {show_json_literal(sha)}",
        )
        ok = False
    since = _time(raw, "since", f"{field}.since", bad)
    images: list[tuple[str, str]] = []
    if "images" in raw:
        raw_images = raw["images"]
        if not isinstance(raw_images, dict):
            bad(
                f"{field}.images",
                f"expected an object of container -> image, got {json_kind(raw_images)}",
            )
            ok = False
        else:
            for container in sorted(raw_images):
                found = _image_problems(container, raw_images[container], f"{field}.images")
                for p in found:
                    bad(p.field, p.message)
                ok = ok and not found
                images.append((container, raw_images[container]))
    paused = raw.get("paused", False)
    if paused is not True and "paused" in raw:
        # Only `true` is ever written: one meaning, one spelling, in signed bytes.
        bad(
            f"{field}.paused",
            f"expected true (omit the key when not paused), got {show_json_literal(paused)}",
        )
        ok = False
    aborted = raw.get("abort")
    if "abort" in raw and (not isinstance(aborted, str) or not _SHA256.fullmatch(aborted)):
        bad(f"{field}.abort", _abort_message(aborted))
        ok = False
    if not ok or since is None:
        return None
    return AppPin(
        sha256=cast(str, sha),
        since=since,
        images=tuple(images),
        paused=paused is True,
        abort=cast("str | None", aborted),
    )


def _abort_message(value: object) -> str:
    return (
        "expected the full revision to abort (64 lower-case hex digits), "
        f"got {show_json_literal(value)}"
    )


def _time(doc: Mapping[str, Any], key: str, field: str, bad: _Report) -> datetime | None:
    if key not in doc:  # reported as missing by the caller
        return None
    value = doc[key]
    if isinstance(value, str) and _TIME.fullmatch(value):
        try:
            return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError as e:
            bad(field, f"{_q(value)} is not a valid time: {e}")
            return None
    bad(field, f'expected a UTC time "YYYY-MM-DDTHH:MM:SSZ", got {show_json_literal(value)}')
    return None


def _path_problems(path: str) -> list[str]:
    """Why a manifest path cannot be pinned: it is later read from Git objects by this name."""
    parts = path.split("/")
    if path.startswith("/"):
        return [f"{_q(path)} must be relative to the repository root"]
    if any(ord(c) < 0x20 or c in '\\"' or c == "\x7f" for c in path):
        return [f"{_q(path)} contains a control character, a backslash or a quote"]
    if parts[0] != "apps" or len(parts) < 2:
        return [f"{_q(path)} must be a file under apps/"]
    if any(part in {"", ".", ".."} for part in parts):
        return [f'{_q(path)} must not contain empty, "." or ".." segments']
    return []


def _image_problems(container: str, ref: object, field: str) -> list[errors.Problem]:
    where = f"{field}[{_q(container)}]"
    found = []
    if (why := labels.dns_label_error(container)) is not None:
        found.append(_problem(where, f"container name {why}"))
    if not isinstance(ref, str) or not ref or len(ref) > _MAX_TEXT or any(c.isspace() for c in ref):
        found.append(
            _problem(where, f"expected a non-empty image reference, got {show_json_literal(ref)}")
        )
    return found


def _text_problems(value: object, field: str) -> list[errors.Problem]:
    # Empty is allowed: `reconciler release` outside a Git work tree has no commit to name.
    if (
        not isinstance(value, str)
        or len(value) > _MAX_TEXT
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        return [
            _problem(field, f"expected a string without spaces, got {show_json_literal(value)}")
        ]
    return []


def _problem(field: str, message: str) -> errors.Problem:
    return errors.Problem(RELEASE_PATH, field, message)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        # A naive time is a bug at the caller: guessing its zone would shift rollout waves.
        raise ValueError(f"expected a timezone-aware time, got {moment!r}")
    return moment.astimezone(UTC)


def _q(text: str) -> str:
    return json.dumps(text)
