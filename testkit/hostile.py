"""A raw TCP server on 127.0.0.1 that plays what real servers will not (stall, drip, endless or
over-long answers): the bounds tests of the static source and of the Git ref query share it.

A subclass says how to answer one connection in `answer`; every connection gets its own daemon
thread, and `close` ends the ones still waiting on `stop`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar


class HostileServer:
    """Accepts on a free loopback port; `answer(conn)` plays `mode` on each connection."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.listener.close()

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
                self.answer(conn)
            except OSError:
                pass


Server = TypeVar("Server", bound=HostileServer)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """The server for a `with` block (or a fixture's yield), closed after it."""
    try:
        yield server
    finally:
        server.close()
