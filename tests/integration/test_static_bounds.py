"""Bounds of the static source over HTTP (SPEC 2.4: every read is bounded in size and time),
against hostile servers nginx will not play: a raw socket server on loopback that stalls, drips,
sends without end or redirects. No engine needed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.adapters.static_source import StaticSource
from reconciler.errors import RemotesFailed
from testkit.hostile import HostileServer, serving

TIMEOUT = 2.0
SLACK = 8.0  # a loaded 2-core CI machine: generous, only a hang fails


class Hostile(HostileServer):
    """Plays `mode` on every connection: HTTP answers nginx will not give."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tree/"

    def answer(self, conn: socket.socket) -> None:
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


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    with serving(Hostile(request.param)) as server:
        yield server


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
