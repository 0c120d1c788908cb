"""Real Git servers on loopback, serving the bare repos of `fleet_repos`.

Owns: `GitDaemon` (git://), `GitHttpServer` (smart HTTP: `git http-backend` as CGI under a tiny
threaded server, because http.server's CGI support is deprecated and gone in 3.13) and
`GitDumbHttpServer` (plain file serving, to exercise servers that refuse shallow fetches).

Git runs as an argument list, never a shell, with `fleet_repos.GIT_ENV`. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import urllib.parse
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testkit.fleet_repos import GIT_ENV
from testkit.loopback import free_port

# --- git daemon --------------------------------------------------------------------------------


class GitDaemon:
    """`git daemon` serving every repo under `base_dir` as git://127.0.0.1:PORT/<name>."""

    def __init__(self, base_dir: Path | str, *, port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> GitDaemon:
        if self._proc is not None:
            return self
        self._proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--base-path={self.base_dir}",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **GIT_ENV},
        )
        _wait_for_port(self.port, self._proc)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"git daemon exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# --- HTTP ----------------------------------------------------------------------------------------


class _GitCgiHandler(BaseHTTPRequestHandler):
    """Runs `git http-backend` once per request, as CGI/1.1 describes."""

    project_root: Path  # set on a subclass per server

    def do_GET(self) -> None:
        self._run_backend()

    def do_POST(self) -> None:
        self._run_backend()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()  # the CRLF after the last chunk (no trailers)
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _run_backend(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._read_body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            **GIT_ENV,
        }
        skip = {"content-type", "content-length", "transfer-encoding"}
        for key, value in self.headers.items():
            if key.lower() not in skip:
                # Carries Git-Protocol (v2) and Content-Encoding (gzip bodies) to the backend.
                env["HTTP_" + key.upper().replace("-", "_")] = value
        done = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        out = done.stdout
        # CGI headers end at the first blank line, written with CRLF or bare LF.
        breaks = [(i, n) for i, n in ((out.find(b"\r\n\r\n"), 4), (out.find(b"\n\n"), 2)) if i >= 0]
        if not breaks:
            self.send_error(502, "git http-backend sent no headers")
            return
        end, width = min(breaks)
        header_block = out[:end].decode("latin-1")
        payload = out[end + width :]
        status, reason, headers = 200, "OK", []
        for line in header_block.splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status, reason or None)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _QuietFileHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _BackgroundHttp:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; restartable on the same port."""

    def __init__(self, base_dir: Path | str, *, port: int = 0) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler] | partial[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> _BackgroundHttp:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())  # type: ignore[arg-type]
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> _BackgroundHttp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GitHttpServer(_BackgroundHttp):
    """Smart HTTP: http://127.0.0.1:PORT/<name> backed by `git http-backend`."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("_Handler", (_GitCgiHandler,), {"project_root": self.base_dir})


class GitDumbHttpServer(_BackgroundHttp):
    """Dumb HTTP (static files): refuses shallow fetches, like some old mirrors."""

    def _handler(self) -> partial[BaseHTTPRequestHandler]:
        return partial(_QuietFileHandler, directory=str(self.base_dir))
