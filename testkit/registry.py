"""A real image registry on loopback (Debian's docker-registry) for pull tests.

Owns: `LocalRegistry` (start/stop/restart `docker-registry serve` on 127.0.0.1 with a temp
storage dir, push a local image through the engine and return its digest reference). The
engine allows plain HTTP to 127.0.0.0/8 registries, so no TLS is needed.

Must not: listen on anything but 127.0.0.1; outlive the session (`close()` stops it and removes
its storage and log).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.loopback import free_port

if TYPE_CHECKING:
    import docker


# Loopback must never go through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)


class RegistryError(Exception):
    """The registry would not start, or a push through the engine failed."""


class RegistryUnavailable(RegistryError):
    """docker-registry is not installed here."""


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:PORT; `stop()`/`start()` keep port and storage."""

    def __init__(self, client: docker.DockerClient, *, start_timeout: float = 15.0) -> None:
        if shutil.which("docker-registry") is None:
            raise RegistryUnavailable(
                "docker-registry is not installed (run scripts/install.sh as root)"
            )
        self._client = client
        self._start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="reconciler-registry-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        # A port picked free may be taken before the registry binds it: try a few.
        for _ in range(5):
            self.port = free_port()
            try:
                self.start()
                break
            except RegistryError:
                if self.port_in_use_by_other():
                    continue
                self.close()
                raise
        else:
            self.close()
            raise RegistryError("could not bind a free port on 127.0.0.1 after 5 tries")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "registry.log"

    def start(self) -> None:
        """Start (or restart) on the same port and storage; returns once /v2/ answers."""
        if self._process is not None and self._process.poll() is None:
            return
        config = self._dir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self._dir / 'storage'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: '{self.address}'}}\n"
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RegistryError(
            f"docker-registry did not answer on {self.address}:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop it (pulls from it then fail); storage stays for `start()`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            if process is not None:
                process.wait()
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop it and remove its storage and log."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def push(self, local_image: str, repo_tag: str) -> str:
        """Push `local_image` as ADDRESS/repo_tag; returns `ADDRESS/repo@sha256:...`."""
        repo, _, tag = repo_tag.rpartition(":") if ":" in repo_tag else (repo_tag, "", "latest")
        remote = f"{self.address}/{repo}"
        if not self._client.images.get(local_image).tag(remote, tag):
            raise RegistryError(f"could not tag {local_image} as {remote}:{tag}")
        digest = ""
        for event in self._client.images.push(remote, tag, stream=True, decode=True):
            if "error" in event:
                raise RegistryError(f"push {remote}:{tag}: {event['error']}")
            digest = event.get("aux", {}).get("Digest", digest)
        if not digest.startswith("sha256:"):
            digest = self.manifest_digest(repo, tag)  # Podman's push reports none
        if not digest.startswith("sha256:"):
            raise RegistryError(f"push {remote}:{tag}: the registry knows no digest for it")
        return f"{remote}@{digest}"

    def manifest_digest(self, repo: str, tag: str) -> str:
        """The digest the registry serves for repo:tag (`Docker-Content-Digest`), or ""."""
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repo}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": ", ".join(_MANIFEST_TYPES)},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return str(answer.headers.get("Docker-Content-Digest") or "")
        except OSError:
            return ""

    def port_in_use_by_other(self) -> bool:
        """True when something else holds our port (the reason a start may fail)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    def _answers(self) -> bool:
        try:
            with _NO_PROXY.open(f"http://{self.address}/v2/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
