"""Static source adapter: the published tree (SPEC 2.4) as the device's `FleetSource`.

The tree lives on an https/http host (object storage, a CDN, GitHub Pages, nginx), behind a file
URL or in a local directory (a USB stick). The port maps onto it like this: `head()` is a
conditional GET of `latest.json` and its "commit" is the release's identity, the sha256 of the
release file; `ensure()` fetches `releases/<version>.json` (which must hash to that sha256) and
its bundle once; `read()` returns the release, the bundle, or a pinned manifest, whose blob is
fetched from `blobs/sha256/<hex>` the first time it is asked for (so only after the caller
verified the release) and kept only when its bytes match its name.

Owns the cache in `cache_dir` (`<state_dir>/static`): releases by sha256 and blobs by sha256,
written atomically, and only when something new arrived: an unchanged poll (a 304, or the same
`latest.json`) writes nothing. One kept-alive HTTP/1.1 connection per mirror (urllib3) and one
TLS context (the system CA store; SSL_CERT_FILE overrides it) built once. Mirrors are tried in
order, the one that answered last first; none is trusted.

Must not: trust anything it fetches (the caller verifies the release signature and every pin),
follow a redirect (a static tree is served where it is configured), read past a size cap or a
deadline (every file has a cap, every request connect and total timeouts: a slow or endless
server cannot hang the daemon), sleep or retry across polls (the daemon backs off), log on
success, or let a credential in a URL reach a message (only redacted names leave this module).
Not thread-safe: one StaticSource per thread.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import ssl
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from reconciler import errors, logs
from reconciler.adapters import http_conn
from reconciler.adapters.http_conn import Failed as _Failed
from reconciler.adapters.http_conn import TooBig as _TooBig
from reconciler.core import published, release
from reconciler.core.urls import redact, static_url_problem, url_problem
from reconciler.errors import FileRejected, RemotesFailed

DEFAULT_TIMEOUT = 60.0
KEEP_RELEASES = 3  # releases (and the blobs they pin) kept in the cache
_SHA256 = re.compile(r"[0-9a-f]{64}")
_USER_AGENT = "reconciler-static-source"


@dataclass(frozen=True)
class RemoteHead:
    """The release a mirror's `latest.json` names; `commit` is the sha256 of the release file,
    `remote` the mirror's redacted name, `failures` the mirrors that failed before it."""

    commit: str
    remote: str
    failures: tuple[tuple[str, str], ...] = ()


# --- one mirror ---------------------------------------------------------------------------------


class _Gone(_Failed):
    """The mirror says the file is not there (404/410, or no such local file)."""


@dataclass(frozen=True)
class _Reply:
    """A file's bytes (empty for `not_modified`) and the validators for the next request."""

    body: bytes
    not_modified: bool = False
    etag: str | None = None
    modified: str | None = None


class _Mirror(Protocol):
    name: str

    def get(
        self, rel: str, *, cap: int, etag: str | None = None, modified: str | None = None
    ) -> _Reply: ...
    def close(self) -> None: ...


class _HttpMirror:
    """An https/http base URL, one kept-alive connection to it."""

    def __init__(self, url: str, *, tls: ssl.SSLContext | None, timeout: float) -> None:
        self._conn = http_conn.Connection(url, tls=tls, timeout=timeout, user_agent=_USER_AGENT)
        self.name = self._conn.name
        self._base = self._conn.path.rstrip("/") + "/"
        self._timeout = timeout

    def get(
        self, rel: str, *, cap: int, etag: str | None = None, modified: str | None = None
    ) -> _Reply:
        deadline = time.monotonic() + self._timeout
        headers = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        if modified is not None:
            headers["If-Modified-Since"] = modified
        response = self._conn.send("GET", self._base + rel, label=rel, headers=headers)
        done = False
        try:
            status = response.status
            if status == 304:
                response.read()  # no body; leaves the connection ready for the next poll
                done = True
                return _Reply(b"", not_modified=True, etag=etag, modified=modified)
            if status in (404, 410):
                raise _Gone(f"{rel}: not found (HTTP {status})")
            if 300 <= status < 400:
                raise self._conn.refused_redirect(response, label=rel)
            if status != 200:
                raise _Failed(f"{rel}: HTTP {status}")
            body = self._conn.read_body(response, label=rel, cap=cap, deadline=deadline)
            done = True
            return _Reply(
                body,
                etag=response.headers.get("ETag"),
                modified=response.headers.get("Last-Modified"),
            )
        except http_conn.TRANSPORT_ERRORS as exc:
            raise _Failed(f"{rel}: {self._conn.describe(exc)}") from None
        finally:
            if not done:
                response.close()  # a connection in an unknown state is never reused
            response.release_conn()

    def close(self) -> None:
        self._conn.close()


class _DirMirror:
    """A local directory or file URL: a USB stick, an on-site copy."""

    def __init__(self, url: str) -> None:
        self.name = url
        path = urlsplit(url).path if url.startswith("file://") else url
        self._root = Path(unquote(path)).absolute()

    def get(
        self, rel: str, *, cap: int, etag: str | None = None, modified: str | None = None
    ) -> _Reply:
        try:
            fd = os.open(self._root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise _Gone(f"{rel}: not found in {self._root}") from None
        except OSError as exc:
            reason = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise _Failed(f"{rel}: {reason}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _Failed(f"{rel}: not a regular file")
            # The file's identity stands in for an ETag: unchanged, nothing is read.
            tag = f"{info.st_dev}-{info.st_ino}-{info.st_size}-{info.st_mtime_ns}"
            if etag == tag:
                return _Reply(b"", not_modified=True, etag=tag)
            if info.st_size > cap:
                raise _TooBig(f"{rel}: is {info.st_size} bytes, over the limit of {cap}")
            try:
                data = handle.read(cap + 1)
            except OSError as exc:
                raise _Failed(f"{rel}: cannot be read: {exc.strerror or exc}") from None
        if len(data) > cap:
            raise _TooBig(f"{rel}: is over the limit of {cap} bytes")
        return _Reply(data, etag=tag)

    def close(self) -> None:
        pass


# --- the source ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    """A mirror's last `latest.json`, with the validators of its next conditional GET."""

    latest: published.Latest
    etag: str | None
    modified: str | None


class StaticSource:
    """The published tree: mirrors in order, a cache of releases and blobs in `cache_dir`."""

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str],
        urls: Sequence[str],
        timeout: float = DEFAULT_TIMEOUT,
        logger: logging.Logger | None = None,
    ) -> None:
        if not urls:
            raise ValueError("source: at least one url is needed")
        for url in urls:
            problem = url_problem(url) or static_url_problem(url)
            if problem:
                raise ValueError(f"source url {redact(url)!r}: {problem}")
        is_http = [url.partition("://")[0].lower() in ("http", "https") for url in urls]
        # One TLS context for every connection: the CA store is read once, not per poll.
        tls = ssl.create_default_context() if any(is_http) else None
        self._mirrors: list[_Mirror] = [
            _HttpMirror(url, tls=tls, timeout=timeout) if http_url else _DirMirror(url)
            for url, http_url in zip(urls, is_http, strict=True)
        ]
        self._order = list(range(len(self._mirrors)))  # the one that answered last first
        self._cache = Path(cache_dir).absolute()
        self._log = logger or logging.getLogger(__name__)
        self._known: dict[str, _Known] = {}
        self._versions: dict[str, int] = {}  # release sha256 -> version, from latest.json
        self._pins: dict[str, dict[str, str]] = {}  # release sha256 -> path -> blob sha256

    @property
    def remotes(self) -> tuple[str, ...]:
        """Redacted mirror names in configured order (metric label values)."""
        return tuple(m.name for m in self._mirrors)

    def close(self) -> None:
        """Close the kept-alive connections; the next request opens them again."""
        for mirror in self._mirrors:
            mirror.close()

    def __enter__(self) -> StaticSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the port ------------------------------------------------------------------------

    def head(self) -> RemoteHead:
        """The release the first answering mirror's `latest.json` names (a conditional GET)."""
        failures: list[tuple[str, str]] = []
        for mirror in self._ordered():
            try:
                latest = self._poll(mirror)
            except _Failed as exc:
                failures.append((mirror.name, exc.reason))
                continue
            self._answered(mirror, failures)
            self._versions[latest.sha256] = latest.version
            return RemoteHead(commit=latest.sha256, remote=mirror.name, failures=tuple(failures))
        raise RemotesFailed(f"poll {published.LATEST}", failures)

    def ensure(self, commit: str, remote: str) -> None:
        """Make the release `commit` readable: nothing when it is cached, else its file and
        bundle from `remote` first, then the other mirrors. Blobs come later, in `read`."""
        sha = _check_sha(commit)
        if self._release_file(sha).is_file():
            return
        version = self._versions.get(sha)
        if version is None:
            raise errors.FetchError(f"release {sha[:12]} was not named by any latest.json")
        first = next((m for m in self._mirrors if remote in (m.name,)), None)
        if first is None:
            raise ValueError(f"remote {redact(remote)!r} is not one of {list(self.remotes)}")
        failures: list[tuple[str, str]] = []
        rel = published.release_path(version)
        for mirror in (first, *(m for m in self._ordered() if m is not first)):
            try:
                data = mirror.get(rel, cap=published.MAX_RELEASE_BYTES).body
                if release.digest(data) != sha:
                    raise _Failed(f"{rel}: its sha256 is not the {sha[:12]} latest.json names")
                try:
                    bundle: bytes | None = mirror.get(
                        published.bundle_path(version), cap=published.MAX_BUNDLE_BYTES
                    ).body
                except _Gone:
                    bundle = None  # an unsigned tree: the verifier says what it thinks of that
            except _Failed as exc:
                failures.append((mirror.name, exc.reason))
                continue
            self._store_release(sha, data, bundle)
            self._answered(mirror, failures)
            return
        raise RemotesFailed(f"fetch release {version} ({sha[:12]})", failures)

    def read(self, commit: str, path: str, *, max_bytes: int) -> bytes | None:
        """The release (`.fleet/release.json`), its bundle, or the manifest the release pins at
        `path`; None for a path it does not pin. A pinned blob not in the cache is fetched and
        kept when its bytes match its sha256; when no mirror has matching bytes, the last wrong
        bytes are returned (the caller refuses them as a pin mismatch)."""
        sha = _check_sha(commit)
        data = self._cached_release(sha)
        if path == release.RELEASE_PATH:
            return _capped(path, data, max_bytes)
        if path == release.BUNDLE_PATH:
            bundle = _read_optional(self._bundle_file(sha))
            return None if bundle is None else _capped(path, bundle, max_bytes)
        pins = self._pins.get(sha)
        if pins is None:
            pins = self._pins[sha] = published.pinned_blobs(data)
        blob = pins.get(path)
        return None if blob is None else self._blob(path, blob, max_bytes)

    # --- polling -------------------------------------------------------------------------

    def _poll(self, mirror: _Mirror) -> published.Latest:
        known = self._known.get(mirror.name)
        reply = mirror.get(
            published.LATEST,
            cap=published.MAX_LATEST_BYTES,
            etag=known.etag if known else None,
            modified=known.modified if known else None,
        )
        if reply.not_modified:
            if known is None:
                raise _Failed(f"{published.LATEST}: 304 Not Modified to an unconditional GET")
            return known.latest
        try:
            latest = published.parse_latest(reply.body)
        except errors.ProblemsError as exc:
            raise _Failed(str(exc.problems[0])) from None
        self._known[mirror.name] = _Known(latest, reply.etag, reply.modified)
        return latest

    def _ordered(self) -> list[_Mirror]:
        return [self._mirrors[i] for i in self._order]

    def _answered(self, mirror: _Mirror, failures: list[tuple[str, str]]) -> None:
        index = self._mirrors.index(mirror)
        self._order.remove(index)
        self._order.insert(0, index)
        if failures:  # the operator should learn that a mirror is down
            failed = "; ".join(f"{name}: {reason}" for name, reason in failures)
            logs.event(
                self._log, logging.WARNING, "fetch.failover", remote=mirror.name, failed=failed
            )

    # --- blobs ---------------------------------------------------------------------------

    def _blob(self, path: str, sha: str, cap: int) -> bytes | None:
        kept = self._cache / published.blob_path(sha)
        data = _read_optional(kept, cap=cap + 1)
        if data is not None and release.digest(data) == sha:
            return data
        if data is not None:
            kept.unlink(missing_ok=True)  # damaged on disk: fetched again below
        failures: list[tuple[str, str]] = []
        wrong: bytes | None = None
        too_big: str | None = None
        gone = 0
        for mirror in self._ordered():
            try:
                data = mirror.get(published.blob_path(sha), cap=cap).body
            except _Gone as exc:
                gone += 1
                failures.append((mirror.name, exc.reason))
                continue
            except _TooBig as exc:
                too_big = exc.reason
                failures.append((mirror.name, exc.reason))
                continue
            except _Failed as exc:
                failures.append((mirror.name, exc.reason))
                continue
            if release.digest(data) != sha:
                wrong = data
                failures.append((mirror.name, f"{published.blob_path(sha)}: wrong bytes"))
                continue
            _write_atomic(kept, data)
            self._answered(mirror, [])
            return data
        if wrong is not None:
            return wrong
        if too_big is not None:
            raise FileRejected(path, too_big)
        if gone == len(failures):
            return None  # no mirror has it: the caller says the pinned file is missing
        raise RemotesFailed(f"fetch {path} ({sha[:12]})", failures)

    # --- the cache -----------------------------------------------------------------------

    def _release_file(self, sha: str) -> Path:
        return self._cache / "releases" / f"{sha}.json"

    def _bundle_file(self, sha: str) -> Path:
        return self._cache / "releases" / f"{sha}.json.sigstore.json"

    def _cached_release(self, sha: str) -> bytes:
        path = self._release_file(sha)
        data = _read_optional(path, cap=published.MAX_RELEASE_BYTES + 1)
        if data is None:
            raise errors.FetchError(f"release {sha[:12]} is not in the cache {self._cache}")
        if release.digest(data) != sha:
            path.unlink(missing_ok=True)  # damaged: the next ensure fetches it again
            raise errors.FetchError(f"release {sha[:12]} in the cache {self._cache} is damaged")
        return data

    def _store_release(self, sha: str, data: bytes, bundle: bytes | None) -> None:
        """The bundle first, the release last: a cached release file means both are there."""
        stale = self._bundle_file(sha)
        if bundle is not None:
            _write_atomic(stale, bundle)
        else:
            stale.unlink(missing_ok=True)
        _write_atomic(self._release_file(sha), data)
        self._prune(sha)

    def _prune(self, newest: str) -> None:
        """Keep `newest` (just stored, maybe an old release a mirror replays: the caller must
        still read it to refuse it), the other releases of the highest versions up to
        KEEP_RELEASES, and the blobs they pin; a rollback needs no more (the state store
        keeps the manifests of the previous good state)."""
        held: list[tuple[int, int, Path, bytes]] = []
        for path in (self._cache / "releases").glob("*.json"):
            if _SHA256.fullmatch(path.stem):
                data = _read_optional(path, cap=published.MAX_RELEASE_BYTES + 1) or b""
                rank = 1 if path.stem == newest else 0
                held.append((rank, published.release_version(data), path, data))
        held.sort(key=lambda entry: entry[:2], reverse=True)
        kept_blobs: set[str] = set()
        for index, (_, _, path, data) in enumerate(held):
            if index < KEEP_RELEASES:
                kept_blobs.update(published.pinned_blobs(data).values())
            else:
                path.unlink(missing_ok=True)
                Path(f"{path}.sigstore.json").unlink(missing_ok=True)
        for blob in (self._cache / "blobs" / "sha256").glob("*"):
            if blob.name not in kept_blobs:
                blob.unlink(missing_ok=True)


def _check_sha(commit: str) -> str:
    if not _SHA256.fullmatch(commit):
        raise ValueError(f"release: expected the 64 hex digits of a sha256, got {commit!r}")
    return commit


def _capped(path: str, data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise FileRejected(path, f"is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def _read_optional(path: Path, *, cap: int = published.MAX_BUNDLE_BYTES + 1) -> bytes | None:
    try:
        with path.open("rb") as handle:
            return handle.read(cap)
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: a power cut leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(name).replace(path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
