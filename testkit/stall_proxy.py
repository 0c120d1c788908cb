"""A TCP proxy on loopback in front of a real server, with a fault switched on while it runs.

Owns `FaultProxy`: listens on 127.0.0.1:PORT and forwards each connection to an upstream
(`host:port`: the real docker-registry, a real `git daemon`). Faults, set with `fault = ...`, act
on connections accepted from then on (a stall also on blob requests sent from then on over
kept-alive connections; `GONE` breaks the open connections too):

- `Fault.NONE`: forwards both ways.
- `Fault.STALL_BLOB`: forwards, but once the answer to a `GET .../blobs/...` request has sent
  `stall_after` bytes, sends nothing more on that connection and keeps it open: a registry that
  stalls mid-blob (the real registry keeps serving; only its bytes stop reaching the client).
- `Fault.SILENT`: accepts, reads and drops what it is sent, answers nothing (a server stalling).
- `Fault.GARBAGE`: answers every connection with bytes no protocol reads.
- `Fault.HTTP_500`: answers every HTTP request with `500 Internal Server Error`.
- `Fault.GONE`: the port is closed (connection refused); `fault = NONE` listens again on it.

Must not: listen on anything but 127.0.0.1; outlive `close()` (every thread is a daemon thread
and every socket is closed there).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from enum import StrEnum
from types import TracebackType

_CHUNK = 16 * 1024
_GARBAGE = b"\xff\x00\x13garbage, not a protocol\r\n\x00\x00\xfe" * 4
_HTTP_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 6\r\nConnection: close\r\n\r\nbroken"
)


class Fault(StrEnum):
    NONE = "none"
    STALL_BLOB = "stall_blob"
    SILENT = "silent"
    GARBAGE = "garbage"
    HTTP_500 = "http_500"
    GONE = "gone"


class FaultProxy:
    """`127.0.0.1:port` -> `upstream`; `fault` switches behaviour for new connections."""

    def __init__(self, upstream: tuple[str, int], *, stall_after: int = 64 * 1024) -> None:
        self.upstream = upstream
        self.stall_after = stall_after
        self.stalled = threading.Event()  # set once a blob answer was cut off
        self._fault = Fault.NONE
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def fault(self) -> Fault:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        self._fault = fault
        if fault is Fault.GONE:
            self.close()  # the server died: its open connections break too
        elif self._listener is None:
            self._listen()

    def close(self) -> None:
        self._close_listener()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            self._track(client)
            threading.Thread(target=self._serve, args=(client, self._fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        if fault is Fault.SILENT:
            _drain(client)
            return
        if fault is Fault.GARBAGE:
            with contextlib.suppress(OSError):
                client.sendall(_GARBAGE)
            _drain(client)  # open until the client gives up: it reads the garbage, not a reset
            return
        if fault is Fault.HTTP_500:
            with contextlib.suppress(OSError):
                _read_head(client)
                client.sendall(_HTTP_500)
            client.close()
            return
        try:
            upstream = self._track(socket.create_connection(self.upstream, timeout=5))
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        state = _Exchange(after=self.stall_after)
        threading.Thread(target=self._requests, args=(client, upstream, state), daemon=True).start()
        self._answers(upstream, client, state)

    def _requests(self, client: socket.socket, upstream: socket.socket, state: _Exchange) -> None:
        """Client -> upstream, noting when a blob is asked for."""
        with contextlib.suppress(OSError):
            while data := client.recv(_CHUNK):
                if b" HTTP/1." in data:  # a new request on a kept-alive connection
                    blob = b"GET " in data and b"/blobs/" in data
                    state.in_blob = blob and self._fault is Fault.STALL_BLOB
                    state.blob_bytes = 0
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _answers(self, upstream: socket.socket, client: socket.socket, state: _Exchange) -> None:
        """Upstream -> client, cut off `after` bytes into a blob answer when stalling."""
        with contextlib.suppress(OSError):
            while data := upstream.recv(_CHUNK):
                if state.in_blob:
                    room = state.after - state.blob_bytes
                    if len(data) > room:
                        client.sendall(data[: max(room, 0)])
                        self.stalled.set()
                        _drain(client)  # the connection stays open; nothing more is sent
                        return
                    state.blob_bytes += len(data)
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


class _Exchange:
    """What one proxied connection has seen (shared by its two pumps)."""

    def __init__(self, *, after: int) -> None:
        self.after = after
        self.in_blob = False
        self.blob_bytes = 0


def _drain(sock: socket.socket) -> None:
    """Read and drop until the peer closes: the peer sees a live connection that answers nothing."""
    with contextlib.suppress(OSError):
        while sock.recv(_CHUNK):
            pass
    with contextlib.suppress(OSError):
        sock.close()


def _read_head(sock: socket.socket) -> bytes:
    """An HTTP request's head (up to the blank line), at most 64 KiB."""
    sock.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 64 * 1024:
        data = sock.recv(_CHUNK)
        if not data:
            break
        head += data
    return head
