"""A second, private Docker engine for the tests that restart one (`restart()`).

The shared test engine (testkit/engine.py) serves every test of the run and must never be
restarted. This one is started by the test that needs it, and stays out of the shared engine's
way: its own data root, exec root (so its own containerd) and socket in a temp dir under
/var/tmp; its own default bridge, created here on 10.216.N.1/24 (N from the pid); no iptables
or sysctl changes (`--iptables=false`, `--ip-masq=false`, `--ip-forward=false`). Published
ports work through docker-proxy, which needs no iptables. Images come from the local registry
(pulled on loopback).

Two dockerd 20.10 options delete the interface named `docker0` (the shared engine's bridge),
whatever `--bridge` says, so they are never given here: `--bridge=none` (at every start), and
`--default-address-pool` (at every start after the first, with live-restore off). Its app
networks therefore come from dockerd's default pools (172.17.0.0/16 and up, skipping ranges a
host route already uses); the shared engine takes its own from 10.213.0.0/16.

Must not: run as a non-root user (dockerd needs root), outlive `close()` (which removes its
containers and networks, stops it and deletes its directories).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import docker
import docker.errors

# One /24 per test process, so private engines of parallel test workers never share an address.
BRIDGE_ADDRESS = f"10.216.{os.getpid() % 250}.1/24"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0


class PrivateEngineUnavailable(Exception):
    """dockerd cannot be started here (not root, not installed)."""


class PrivateEngine:
    """dockerd on `unix://<dir>/docker.sock`; `restart()` stops it (its containers stop with it,
    as on a host where dockerd restarts) and starts it again on the same data."""

    def __init__(self) -> None:
        if os.geteuid() != 0 or shutil.which("dockerd") is None or shutil.which("ip") is None:
            raise PrivateEngineUnavailable(
                "a private dockerd needs root, dockerd and iproute2 installed"
            )
        self.root = Path(tempfile.mkdtemp(prefix="rc-engine-", dir="/var/tmp"))
        self.bridge = f"rcb-{self.root.name[-8:].lower()}"  # interface names: <= 15 characters
        self._process: subprocess.Popen[bytes] | None = None
        try:
            for command in (
                ["ip", "link", "add", self.bridge, "type", "bridge"],
                ["ip", "addr", "add", BRIDGE_ADDRESS, "dev", self.bridge],
                ["ip", "link", "set", self.bridge, "up"],
            ):
                subprocess.run(command, check=True, capture_output=True)
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=60)

    def start(self) -> None:
        argv = [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "-H", self.url,
            "--pidfile", str(self.root / "docker.pid"),
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private dockerd did not come up:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def answers(self) -> bool:
        """`GET /_ping` on the socket answers OK (by hand: docker-py leaks a socket when the
        socket file is missing)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.root / "docker.sock"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = sock.recv(4096)
        except OSError:
            return False
        return answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0]

    def close(self) -> None:
        if self._process is not None and self.answers():
            with contextlib.closing(self.client()) as client:
                for container in client.containers.list(all=True):
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True, v=True)
                for network in client.networks.list():
                    if network.name not in ("bridge", "host", "none"):
                        with contextlib.suppress(docker.errors.APIError):
                            network.remove()
        self.stop()
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateEngine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
