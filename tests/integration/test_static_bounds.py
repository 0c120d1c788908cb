"""Bounds of the static source over HTTP (SPEC 2.4: every read is bounded in size and time),
against hostile servers nginx will not play: a raw socket server on loopback that stalls, drips,
sends without end or redirects. No engine needed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.adapters.static_source import StaticSource
from reconciler.errors import RemotesFailed

TIMEOUT = 2.0
SLACK = 8.0  # a loaded 2-core CI machine: generous, only a hang fails


class Hostile:
    """Answers every connection on 127.0.0.1 per `mode`, in a daemon thread."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tree/"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.mode == "silent":
                    self.stop.wait(30)
                elif self.mode == "endless":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    while not self.stop.is_set():
                        conn.sendall(b"{" * 65536)
                elif self.mode == "drip":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                    while not self.stop.wait(0.3):
                        conn.sendall(b" ")
                elif self.mode == "huge":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")
                    self.stop.wait(30)
                elif self.mode == "redirect":
                    conn.sendall(
                        b"HTTP/1.1 302 Found\r\nLocation: https://user:pw@evil.example/x\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    server = Hostile(request.param)
    yield server
    server.close()


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        ("silent", "timed out"),
        ("endless", "over the limit"),
        ("drip", "timed out"),
        ("huge", "over the limit"),
        ("redirect", "redirected (HTTP 302) to https://***@evil.example/x; not followed"),
    ],
    indirect=["hostile"],
)
def test_a_hostile_server_fails_the_poll_within_the_bounds(
    hostile: Hostile, reason: str, tmp_path: Path
):
    source = StaticSource(cache_dir=tmp_path / "cache", urls=[hostile.url], timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(RemotesFailed) as info:
        source.head()
    assert time.monotonic() - started < TIMEOUT + SLACK
    ((remote, why),) = info.value.failures
    assert remote == hostile.url
    assert reason in why, why
    assert "pw" not in str(info.value)
    source.close()
