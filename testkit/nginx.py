"""nginx from Debian on loopback, serving a published tree (SPEC 2.4) over HTTP and HTTPS.

`Nginx` runs the distribution's binary as the current user with its own prefix, config, pid and
log files in a temp dir (never the system service), `daemon off`, on 127.0.0.1 only. `TestCA`
makes a CA and a server certificate for 127.0.0.1 with the `cryptography` package; a device
trusts it through SSL_CERT_FILE. The access log is one line per request, status included, so a
test can tell a 304 from a 200.

For the fleet benchmark: `CacheTier` is a second nginx with `proxy_cache` in front of an origin,
standing in for a CDN edge (request collapsing, conditional revalidation, cache status in the
log); `tree_cache_headers` gives the origin the published tree's Cache-Control headers;
`cpu_seconds` reads the server process's CPU from /proc.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path

from testkit.loopback import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# One line per request with what a benchmark needs: when, status, size, cache status, time.
BENCH_LOG_FORMAT = (
    "$msec $status $request_method $uri $body_bytes_sent $upstream_cache_status $request_time"
)


def tree_cache_headers(latest_max_age: int) -> str:
    """`location` rules giving a published tree (SPEC 2.4) the headers README tells a CDN origin
    to send: immutable files cached for a year, `latest.json` for `latest_max_age` seconds."""
    return f"""
        location = /latest.json {{ add_header Cache-Control "public, max-age={latest_max_age}"; }}
        location /releases/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
        location /blobs/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}"""


class NginxUnavailable(RuntimeError):
    """No nginx binary here (scripts/install.sh installs nginx-light)."""


class TestCA:
    """A CA and one server certificate for 127.0.0.1 and localhost, as PEM files in `directory`."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reconciler test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca_file.write_bytes(ca_cert.public_bytes(pem))
        self.cert_file.write_bytes(cert.public_bytes(pem))
        self.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


class Nginx:
    """nginx serving `root` on http://127.0.0.1:port and, with `tls`, https://127.0.0.1:tls_port.

    `extra` is spliced into the server blocks (a test's `location` rules, say).
    """

    def __init__(
        self,
        workdir: Path,
        root: Path,
        *,
        tls: TestCA | None = None,
        extra: str = "",
        worker_connections: int = 256,
        log_format: str | None = None,
    ) -> None:
        if not Path(NGINX).exists():
            raise NginxUnavailable(f"{NGINX} not found; run scripts/install.sh")
        self.workdir = workdir
        self.root = root
        self.tls = tls
        self.extra = extra
        self.worker_connections = worker_connections
        self.log_format = log_format  # None: the "status" lines `requests` describes
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def https_url(self) -> str:
        assert self.tls_port is not None
        return f"https://127.0.0.1:{self.tls_port}/"

    def _server_body(self) -> str:
        """What each server block serves (a subclass serves something else than `root`)."""
        return f"root {self.root};\n        {self.extra}"

    def _http_extra(self) -> str:
        return ""

    def _config(self) -> str:
        tls = ""
        if self.tls is not None:
            tls = f"""
    server {{
        listen 127.0.0.1:{self.tls_port} ssl;
        ssl_certificate {self.tls.cert_file};
        ssl_certificate_key {self.tls.key_file};
        {self._server_body()}
    }}"""
        temp = self.workdir / "tmp"
        log_format = (
            self.log_format or "$status $request_method $uri $connection $connection_requests"
        )
        # Buffered when a benchmark asks for its own format: a write per request would be
        # the largest cost measured; the log is flushed on exit.
        log_buffer = " buffer=256k" if self.log_format else ""
        return f"""
daemon off;
master_process off;  # one process as the current user: it reads the temp dirs
pid {self.workdir / "nginx.pid"};
error_log {self.error_log} warn;
events {{ worker_connections {self.worker_connections}; }}
http {{
    types {{ application/json json; }}
    default_type application/octet-stream;
    log_format status '{log_format}';
    access_log {self.access_log} status{log_buffer};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    etag on;{self._http_extra()}
    server {{
        listen 127.0.0.1:{self.port};
        {self._server_body()}
    }}{tls}
}}
"""

    def start(self) -> Nginx:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._config(), encoding="utf-8")
        self._proc = subprocess.Popen(
            [NGINX, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait()
        return self

    def reload(self, extra: str) -> None:
        """New `extra` rules, then a restart (quick; keeps the ports)."""
        self.stop()
        self.extra = extra
        self.start()

    def _wait(self) -> None:
        import socket

        deadline = time.monotonic() + 20
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        while ports:
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = self.error_log.read_text() if self.error_log.exists() else ""
                raise RuntimeError(f"nginx exited with {self._proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", ports[0]), timeout=1):
                    ports.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "nginx is not running"
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the nginx process so far (one process: `master_process off`)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def requests(self) -> list[str]:
        """Access log lines: "<status> <method> <uri> <connection> <requests on it>"."""
        if not self.access_log.exists():
            return []
        return self.access_log.read_text().splitlines()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CacheTier(Nginx):
    """nginx with `proxy_cache` in front of `origin` (an http URL), standing in for a CDN edge.

    It keeps what the origin's Cache-Control allows, answers conditional GETs from the cache,
    revalidates an expired file with a conditional GET to the origin (in the background, serving
    the stale copy meanwhile), and lets one request per missing file reach the origin while the
    others wait for it (`proxy_cache_lock`): what CDNs call request collapsing. Upstream
    connections are kept alive. The cache lives in `workdir`.
    """

    def __init__(
        self,
        workdir: Path,
        origin: str,
        *,
        tls: TestCA | None = None,
        worker_connections: int = 256,
        log_format: str | None = BENCH_LOG_FORMAT,
    ) -> None:
        super().__init__(
            workdir,
            workdir / "unused-root",
            tls=tls,
            worker_connections=worker_connections,
            log_format=log_format,
        )
        self.origin = origin.rstrip("/")

    def _http_extra(self) -> str:
        host = self.origin.split("://", 1)[1]
        return f"""
    proxy_cache_path {self.workdir / "cache"} levels=1:2 keys_zone=tree:16m max_size=1g
                     inactive=1h use_temp_path=off;
    upstream origin {{ server {host}; keepalive 32; }}"""

    def _server_body(self) -> str:
        return """location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache tree;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_revalidate on;
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
        }"""
