"""One kept-alive HTTP/1.1 connection to one server, bounded in size and time: the transport the
static source (`static_source`) and the Git ref query (`git_refs`) share.

Owns: the urllib3 pool of one connection (no retries, no redirects), basic auth from the URL's
user info, the connect and total timeouts, a body read capped in bytes and by a deadline, and
error texts with credentials scrubbed. The TLS context is the caller's, built once for every
connection, so the CA store is read once and not per request.

Must not: follow a redirect (the caller says why it refuses one), retry (except once, at once, on
a kept-alive connection the server closed while it was idle), log, or let a credential in the URL
reach a message (only the redacted name and scrubbed texts leave this module).
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from urllib.parse import unquote, urlsplit

import urllib3

from reconciler import text as text_mod
from reconciler.core.urls import redact, scrub

CONNECT_TIMEOUT = 10.0  # at most; never more than the total timeout
_CHUNK = 64 * 1024

# What a broken connection, a bad TLS handshake or a malformed answer raises.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException)


class Failed(Exception):
    """This server could not answer this request; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooBig(Failed):
    """The body is over its size cap."""


class Connection:
    """An https/http URL: one kept-alive connection to its host, requests under its path."""

    def __init__(
        self, url: str, *, tls: ssl.SSLContext | None, timeout: float, user_agent: str
    ) -> None:
        parts = urlsplit(url)
        self.name = redact(url)
        self.path = parts.path or "/"
        self.timeout = timeout
        self.headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        if parts.username is not None:  # https://user:token@host/x: basic auth
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._limits = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout)
        self._host, self._port = parts.hostname or "", parts.port
        self._https = parts.scheme.lower() == "https"
        self._tls = tls
        self._pool: urllib3.HTTPConnectionPool | None = None

    def _open(self) -> urllib3.HTTPConnectionPool:
        if self._pool is None:
            # maxsize 1: one kept-alive connection; retries and redirects are decided here.
            if self._https:
                self._pool = urllib3.HTTPSConnectionPool(
                    self._host,
                    self._port,
                    maxsize=1,
                    block=False,
                    retries=False,
                    timeout=self._limits,
                    ssl_context=self._tls,
                )
            else:
                self._pool = urllib3.HTTPConnectionPool(
                    self._host,
                    self._port,
                    maxsize=1,
                    block=False,
                    retries=False,
                    timeout=self._limits,
                )
        return self._pool

    def send(
        self,
        method: str,
        path: str,
        *,
        label: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """The response (headers read, body not) to one request; `label` names it in reasons.

        The caller reads the body with `read_body` or closes the response, then releases it.
        """
        merged = {**self.headers, **(headers or {})}
        for attempt in (1, 2):
            try:
                return self._open().urlopen(
                    method,
                    path,
                    body=body,
                    headers=merged,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=False,
                )
            except urllib3.exceptions.ProtocolError as exc:
                # A kept-alive connection the server closed while idle: once more, afresh.
                if attempt == 2:
                    raise Failed(f"{label}: {self.describe(exc)}") from None
            except TRANSPORT_ERRORS as exc:
                raise Failed(f"{label}: {self.describe(exc)}") from None
        raise AssertionError("unreachable")

    def read_body(
        self, response: urllib3.BaseHTTPResponse, *, label: str, cap: int, deadline: float
    ) -> bytes:
        """The body, at most `cap` bytes, all of it by `deadline`: each socket read waits at
        most the time left, so a server that drips bytes cannot stretch the request."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise TooBig(f"{label}: is {length} bytes, over the limit of {cap}")
        sock = getattr(getattr(response, "connection", None), "sock", None)
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"{label}: timed out after {self.timeout:g}s reading the body")
                if sock is not None:
                    sock.settimeout(left)
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > cap:
                    raise TooBig(f"{label}: is over the limit of {cap} bytes")
                chunks.append(chunk)
        except TRANSPORT_ERRORS as exc:
            raise Failed(f"{label}: {self.describe(exc)}") from None

    def refused_redirect(self, response: urllib3.BaseHTTPResponse, *, label: str) -> Failed:
        """The failure for a 3xx answer: never followed, its target named without credentials."""
        where = text_mod.one_line(scrub(response.headers.get("Location", "")), 200)
        return Failed(f"{label}: redirected (HTTP {response.status}) to {where}; not followed")

    def describe(self, exc: BaseException) -> str:
        """A transport error as a short reason, credentials scrubbed."""
        # First: urllib3's NewConnectionError (refused, unreachable) is a ConnectTimeoutError
        # too, for compatibility; only its cause says what happened.
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            exc = exc.__cause__ or exc
        if isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return f"timed out after {self.timeout:g}s"
        return text_mod.one_line(scrub(f"{type(exc).__name__}: {exc}"), 300)

    def close(self) -> None:
        """Close the kept-alive connection; the next request opens a new one."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
