"""The branch-head query without forking `git`: Git's ref listing read in this process.

`HeadQuery(url, branch).head()` answers what `git ls-remote URL refs/heads/BRANCH` answers: the
branch's commit, or None when the remote has no such branch. Over https/http it speaks Git's
smart HTTP on one kept-alive connection (`http_conn`): protocol v2 `ls-refs` with a `ref-prefix`
(after one `info/refs` probe, each poll is one POST whose answer is the one ref), or, from a server
that answers v0/v1, the ref advertisement of `info/refs` (one GET a poll), or a dumb server's
`info/refs` file. Over git:// it asks `git daemon` the same (v2 `ls-refs`, or the v0
advertisement) on one TCP connection per query, as that protocol has it. Other URLs (ssh, file,
local paths) are not its business: `supports()` says which are, and `git_source` keeps
`git ls-remote` for the rest.

Owns the pkt-line codec (`PktReader`, `pkt`) and the parsing of the three listings.

Must not: follow a redirect (the remote is the one configured; the reason names the target), read
past a size cap or the deadline (every answer is capped, every query bounded by `timeout`: a
stalling or endless server fails the query), fork a process, sleep or retry (the caller backs
off), log, or let a credential in the URL reach a message (reasons name the remote redacted).
Not thread-safe: one HeadQuery per thread.
"""

from __future__ import annotations

import contextlib
import enum
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

from reconciler import text as text_mod
from reconciler.adapters import http_conn
from reconciler.core.urls import redact, scrub

DEFAULT_TIMEOUT = 60.0
MAX_PKT = 65520  # Git's LARGE_PACKET_MAX: the longest pkt-line, its 4 length digits included
MAX_LS_REFS = 1024 * 1024  # a v2 answer: the refs under refs/heads/<branch> only
MAX_ADVERTISEMENT = 16 * 1024 * 1024  # a v0 answer or a dumb info/refs: every ref of the repo
GIT_PORT = 9418
_USER_AGENT = "reconciler-git-refs"
_OID = re.compile(rb"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
_RESULT = "application/x-git-upload-pack-result"


class QueryFailed(Exception):
    """The remote did not tell the branch head; `reason` is safe to log (no credentials)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PktError(QueryFailed):
    """Bytes that are not the pkt-lines Git's protocol is made of (git's words for it too)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"protocol error: {reason}")


def supports(url: str) -> bool:
    """Whether HeadQuery speaks this URL's transport (https, http, git)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in ("https", "http", "git")


# --- pkt-lines ------------------------------------------------------------------------------


class Special(enum.Enum):
    """The pkt-lines without payload: `0000`, `0001`, `0002`."""

    FLUSH = 0
    DELIM = 1
    RESPONSE_END = 2


Pkt = bytes | Special


def pkt(payload: bytes | str) -> bytes:
    """One data pkt-line: four hex digits of length (themselves included), then the payload."""
    data = payload.encode() if isinstance(payload, str) else payload
    if not data or len(data) + 4 > MAX_PKT:
        raise ValueError(f"a pkt-line payload is 1 to {MAX_PKT - 4} bytes, not {len(data)}")
    return b"%04x" % (len(data) + 4) + data


FLUSH = b"0000"
DELIM = b"0001"


class PktReader:
    """pkt-lines from `read(n)`, which returns at most n bytes (b"" at the end of the stream).

    Each line is checked: four hex digits, a length of 4 to MAX_PKT or a special 0000-0002, and
    all of its payload before the stream ends; anything else is a PktError, never a guess.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._pending: list[Pkt | None] = []

    def unread(self, line: Pkt | None) -> None:
        """Put `line` back: the next `next()` returns it."""
        self._pending.append(line)

    @classmethod
    def of(cls, data: bytes) -> PktReader:
        """A reader over bytes already in memory (an HTTP body)."""
        view = memoryview(data)
        offset = 0

        def read(size: int) -> bytes:
            nonlocal offset
            chunk = bytes(view[offset : offset + size])
            offset += len(chunk)
            return chunk

        return cls(read)

    def _exactly(self, size: int, what: str) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < size:
            chunk = self._read(size - got)
            if not chunk:
                raise PktError(f"truncated pkt-line: {what} ends after {got} of {size} bytes")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def next(self) -> Pkt | None:
        """The next pkt-line, or None at a clean end of the stream (between lines)."""
        if self._pending:
            return self._pending.pop()
        head = self._read(4)
        if not head:
            return None
        if len(head) < 4:
            head += self._exactly(4 - len(head), "the length")
        if not re.fullmatch(rb"[0-9a-fA-F]{4}", head):
            raise PktError(f"malformed pkt-line length {text_mod.one_line(repr(head), 40)}")
        size = int(head, 16)
        if size < 3:
            return Special(size)
        if size == 3:
            raise PktError("malformed pkt-line length 0003")
        if size > MAX_PKT:
            raise PktError(f"pkt-line of {size} bytes, over Git's limit of {MAX_PKT}")
        return self._exactly(size - 4, f"a pkt-line of {size} bytes")

    def until_flush(self) -> Iterator[bytes]:
        """Data lines up to a flush (consumed), their trailing newline removed; a server's
        `ERR` line becomes a QueryFailed, a missing flush or a stray special a PktError."""
        while True:
            line = self.next()
            if line is None:
                raise PktError("the answer ends before its flush-pkt")
            if line is Special.FLUSH:
                return
            if isinstance(line, Special):
                raise PktError(f"unexpected {line.name.lower()}-pkt")
            line = line.removesuffix(b"\n")
            if line.startswith(b"ERR "):
                said = text_mod.one_line(scrub(line[4:].decode("utf-8", "replace")), 200)
                raise QueryFailed(f"the server says: {said}")
            yield line


# --- the listings ---------------------------------------------------------------------------


def _ref_line(line: bytes, separator: bytes) -> tuple[bytes, bytes]:
    """(object id, ref name) of "<oid><sep><name>[ attributes...]"."""
    oid, sep, rest = line.partition(separator)
    if not sep or not _OID.fullmatch(oid) or not rest:
        raise PktError(f"malformed ref line {text_mod.one_line(repr(line[:80]), 100)}")
    return oid, rest


def _find(refs: Iterator[tuple[bytes, bytes]], ref: bytes) -> str | None:
    found = None
    for oid, name in refs:  # read to the end: the whole answer is checked, not only a prefix
        if name == ref and found is None:
            found = oid.decode()
    return found


def _v0_refs(reader: PktReader) -> Iterator[tuple[bytes, bytes]]:
    """The refs of a v0/v1 advertisement; the capabilities after the first NUL are skipped."""
    first = True
    for line in reader.until_flush():
        if first and line == b"version 1":
            continue
        yield _ref_line(line.partition(b"\0")[0] if first else line, b" ")
        first = False


def _v2_refs(reader: PktReader) -> Iterator[tuple[bytes, bytes]]:
    """The refs of an `ls-refs` answer: "<oid> <name>[ symref-target:...][ peeled:...]"."""
    for line in reader.until_flush():
        oid, rest = _ref_line(line, b" ")
        yield oid, rest.partition(b" ")[0]


def _v2_capabilities(reader: PktReader) -> dict[str, str]:
    """The capability advertisement after "version 2": name -> value ("" for none)."""
    caps = {}
    for line in reader.until_flush():
        name, _, value = line.decode("utf-8", "replace").partition("=")
        caps[name] = value
    if "ls-refs" not in caps:
        raise QueryFailed("the server speaks protocol v2 without the ls-refs command")
    return caps


def _ls_refs_request(caps: dict[str, str], ref: str) -> bytes:
    lines = [pkt("command=ls-refs\n")]
    if caps.get("object-format"):
        lines.append(pkt(f"object-format={caps['object-format']}\n"))
    return b"".join([*lines, DELIM, pkt(f"ref-prefix {ref}\n"), FLUSH])


def _dumb_refs(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The refs of a dumb server's `info/refs` file: "<oid>\\t<name>" lines."""
    for line in body.splitlines():
        if line:
            yield _ref_line(line, b"\t")


# --- the query ------------------------------------------------------------------------------


class HeadQuery:
    """The head of `branch` on the https, http or git URL `url` (see `supports`).

    `tls` is the context for https (build one for all queries: the CA store is read once);
    None builds the default one (SSL_CERT_FILE overrides the system store). `timeout` bounds
    each query from start to end; connecting waits at most `http_conn.CONNECT_TIMEOUT` of it.
    """

    def __init__(
        self,
        url: str,
        branch: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not supports(url):
            raise ValueError(f"{redact(url)!r}: not an https, http or git URL")
        self.name = redact(url)
        self._ref = f"refs/heads/{branch}"
        self._timeout = timeout
        parts = urlsplit(url)
        self._git = parts.scheme.lower() == "git"
        self._host, self._port, self._path = parts.hostname or "", parts.port, parts.path
        self._http: http_conn.Connection | None = None
        self._caps: dict[str, str] | None = None  # the v2 capabilities, once a probe found them
        if not self._git:
            if tls is None and parts.scheme.lower() == "https":
                tls = ssl.create_default_context()
            self._http = http_conn.Connection(url, tls=tls, timeout=timeout, user_agent=_USER_AGENT)
            self._base = parts.path.rstrip("/")

    def head(self) -> str | None:
        """The commit `refs/heads/<branch>` points at, or None if the remote has no such branch.

        Raises QueryFailed with the reason when the remote cannot be asked or answers nonsense.
        """
        deadline = time.monotonic() + self._timeout
        if self._http is None:
            return self._over_git(deadline)
        if self._caps is not None:
            try:
                return self._ls_refs(self._http, self._caps, deadline)
            except QueryFailed:
                self._caps = None  # the server may have changed: probe again on the next poll
                raise
        return self._probe(self._http, deadline)

    def close(self) -> None:
        """Close the kept-alive connection; the next query opens a new one."""
        if self._http is not None:
            self._http.close()

    # --- smart and dumb HTTP ---------------------------------------------------------------

    def _probe(self, conn: http_conn.Connection, deadline: float) -> str | None:
        """GET info/refs asking for v2: a v2 server gets its ls-refs right away (and every
        later poll only that), a v0/v1 or dumb server's listing is read for the branch."""
        label = "info/refs"
        path = f"{self._base}/info/refs?service=git-upload-pack"
        kind, body = self._request(
            conn, "GET", path, label=label, deadline=deadline, cap=MAX_ADVERTISEMENT
        )
        if kind != _ADVERTISEMENT:
            return _find(_dumb_refs(body), self._ref.encode())  # a dumb server's file
        reader = PktReader.of(body)
        first = reader.next()
        if isinstance(first, bytes) and first.startswith(b"# service="):
            if reader.next() is not Special.FLUSH:
                raise PktError(f"{label}: no flush-pkt after the service line")
            first = reader.next()
        if first == b"version 2\n":
            caps = _v2_capabilities(reader)
            self._caps = caps
            return self._ls_refs(conn, caps, deadline)
        # v0/v1: the advertisement is the listing, this first line included.
        reader.unread(first)
        return _find(_v0_refs(reader), self._ref.encode())

    def _ls_refs(
        self, conn: http_conn.Connection, caps: dict[str, str], deadline: float
    ) -> str | None:
        request = _ls_refs_request(caps, self._ref)
        _, body = self._request(
            conn,
            "POST",
            f"{self._base}/git-upload-pack",
            label="git-upload-pack",
            deadline=deadline,
            cap=MAX_LS_REFS,
            body=request,
        )
        reader = PktReader.of(body)
        found = _find(_v2_refs(reader), self._ref.encode())
        tail = reader.next()
        if tail not in (None, Special.RESPONSE_END):
            raise PktError("git-upload-pack: more after the end of the ls-refs answer")
        return found

    def _request(
        self,
        conn: http_conn.Connection,
        method: str,
        path: str,
        *,
        label: str,
        deadline: float,
        cap: int,
        body: bytes | None = None,
    ) -> tuple[str, bytes]:
        """(content type, body) of a 200 answer; any other answer is a QueryFailed."""
        headers = {"Git-Protocol": "version=2"}
        if body is not None:
            headers["Content-Type"] = "application/x-git-upload-pack-request"
            headers["Accept"] = _RESULT
        try:
            response = conn.send(method, path, label=label, headers=headers, body=body)
        except http_conn.Failed as exc:
            raise QueryFailed(exc.reason) from None
        done = False
        try:
            status = response.status
            if 300 <= status < 400:
                raise QueryFailed(conn.refused_redirect(response, label=label).reason)
            if status == 404:
                raise QueryFailed(f"{label}: repository not found (HTTP 404)")
            if status in (401, 403):
                raise QueryFailed(f"{label}: access denied (HTTP {status})")
            if status != 200:
                raise QueryFailed(f"{label}: HTTP {status}")
            data = conn.read_body(response, label=label, cap=cap, deadline=deadline)
            done = True
        except http_conn.Failed as exc:
            raise QueryFailed(exc.reason) from None
        finally:
            if not done:
                response.close()  # a connection in an unknown state is never reused
            response.release_conn()
        kind = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if method == "POST" and kind != _RESULT:
            raise QueryFailed(f"{label}: answered {text_mod.one_line(kind, 60)!r}, not {_RESULT}")
        return kind, data

    # --- git:// ----------------------------------------------------------------------------

    def _over_git(self, deadline: float) -> str | None:
        """One connection to `git daemon`: the v2 ls-refs, or the v0 advertisement."""
        port = self._port or GIT_PORT
        try:
            with socket.create_connection(
                (self._host, port), timeout=min(http_conn.CONNECT_TIMEOUT, self._timeout)
            ) as sock:
                read = _bounded_reader(sock, deadline, MAX_ADVERTISEMENT, self._timeout)
                host = self._host if self._port is None else f"{self._host}:{port}"
                hello = f"git-upload-pack {unquote(self._path)}\0host={host}\0\0version=2\0"
                sock.sendall(pkt(hello))
                reader = PktReader(read)
                first = reader.next()
                if first is None:
                    raise QueryFailed("the server closed the connection (no such repository?)")
                if first == b"version 2\n":
                    caps = _v2_capabilities(reader)
                    sock.sendall(_ls_refs_request(caps, self._ref))
                    found = _find(_v2_refs(reader), self._ref.encode())
                else:
                    reader.unread(first)
                    found = _find(_v0_refs(reader), self._ref.encode())
                # The end of the session (v0: "I want nothing"); the answer is in already.
                with contextlib.suppress(OSError):
                    sock.sendall(FLUSH)
                return found
        except TimeoutError:
            raise QueryFailed(f"timed out after {self._timeout:g}s") from None
        except OSError as exc:
            raise QueryFailed(
                text_mod.one_line(scrub(f"{type(exc).__name__}: {exc}"), 300)
            ) from None


def _bounded_reader(
    sock: socket.socket, deadline: float, cap: int, timeout: float
) -> Callable[[int], bytes]:
    """`read(n)` on `sock` that waits at most until `deadline` and reads `cap` bytes in all."""
    total = 0

    def read(size: int) -> bytes:
        nonlocal total
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(size, 64 * 1024))
        total += len(chunk)
        if total > cap:
            raise QueryFailed(f"the answer is over the limit of {cap} bytes")
        return chunk

    return read
