"""Real Git servers on loopback and quick fleet repos, for integration tests.

Owns: `GitDaemon` (git://), `GitHttpServer` (smart HTTP: `git http-backend` as CGI under a tiny
threaded server, because http.server's CGI support is deprecated and gone in 3.13),
`GitDumbHttpServer` (plain file serving, to exercise servers that refuse shallow fetches), and
`make_repo` / `commit_files` to build bare fleet repos with plumbing commands.

Every git call is an argument list, never a shell, with a fixed author, committer, date and no
user or system config, so the same files on the same parent give the same commit id everywhere
(a mirror built by committing the same files matches its primary). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Test",
    "GIT_AUTHOR_EMAIL": "fleet@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "Fleet Test",
    "GIT_COMMITTER_EMAIL": "fleet@example.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it: retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _git(*args: str, input_bytes: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
    full_env = {**os.environ, **_GIT_ENV, **(env or {})}
    done = subprocess.run(
        ["git", *args], input=input_bytes, capture_output=True, env=full_env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode().strip()


# --- fleet repos -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRepo:
    """A bare repo on disk that tests commit to and servers serve."""

    path: Path
    branch: str = "main"

    def commit(
        self,
        files: Mapping[str, bytes | None],
        message: str = "change",
        *,
        symlinks: Mapping[str, str] | None = None,
        submodules: Mapping[str, str] | None = None,
    ) -> str:
        return commit_files(
            self.path,
            files,
            message,
            branch=self.branch,
            symlinks=symlinks,
            submodules=submodules,
        )

    def head(self) -> str:
        return _git("--git-dir", str(self.path), "rev-parse", f"refs/heads/{self.branch}")

    @property
    def file_url(self) -> str:
        return self.path.resolve().as_uri()


def make_repo(path: Path | str, *, branch: str = "main") -> FleetRepo:
    """An empty bare repo at `path` whose default branch is `branch`."""
    target = Path(path)
    _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(target))
    return FleetRepo(path=target, branch=branch)


def clone_repo(source: FleetRepo, path: Path | str) -> FleetRepo:
    """A bare copy of `source` (a mirror with the same commit ids)."""
    target = Path(path)
    _git("clone", "--quiet", "--bare", str(source.path), str(target))
    _git("--git-dir", str(target), "update-server-info")
    return FleetRepo(path=target, branch=source.branch)


def commit_files(
    repo_path: Path | str,
    files: Mapping[str, bytes | None],
    message: str,
    *,
    branch: str = "main",
    symlinks: Mapping[str, str] | None = None,
    submodules: Mapping[str, str] | None = None,
) -> str:
    """Commit on top of `branch`: `files` written (None deletes), `symlinks` as path -> target,
    `submodules` as path -> commit id (gitlinks). Returns the new commit id."""
    git_dir = str(repo_path)
    ref = f"refs/heads/{branch}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            parent: str | None = _git("--git-dir", git_dir, "rev-parse", "--verify", "-q", ref)
        except RuntimeError:
            parent = None
        if parent:
            _git("--git-dir", git_dir, "read-tree", parent, env=env)
        # One --index-info batch; mode 0 removes a path, --replace lets a file or link take a
        # directory's place (and the reverse).
        lines: list[str] = []
        for name, data in files.items():
            if data is None:
                lines.append(f"0 {'0' * 40}\t{name}")
                continue
            blob = _git("--git-dir", git_dir, "hash-object", "-w", "--stdin", input_bytes=data)
            lines.append(f"100644 {blob}\t{name}")
        for name, target in (symlinks or {}).items():
            blob = _git(
                "--git-dir", git_dir, "hash-object", "-w", "--stdin", input_bytes=target.encode()
            )
            lines.append(f"120000 {blob}\t{name}")
        lines.extend(f"160000 {sha}\t{name}" for name, sha in (submodules or {}).items())
        if lines:
            index_info = ("\n".join(lines) + "\n").encode()
            _git(
                "--git-dir",
                git_dir,
                "update-index",
                "--replace",
                "--index-info",
                input_bytes=index_info,
                env=env,
            )
        tree = _git("--git-dir", git_dir, "write-tree", env=env)
    parents = ["-p", parent] if parent else []
    commit = _git("--git-dir", git_dir, "commit-tree", tree, *parents, "-m", message)
    _git("--git-dir", git_dir, "update-ref", ref, commit)
    # Dumb HTTP clients read info/refs and objects/info/packs: keep them current.
    _git("--git-dir", git_dir, "update-server-info")
    return commit


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
            env={**os.environ, **_GIT_ENV},
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
            **_GIT_ENV,
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
