"""`source.kind: static` end to end (SPEC 2.4, 3.2 step 1): `reconciler publish` writes the tree,
nginx from Debian serves it over HTTPS (a test CA) and plain HTTP, and a device applies from it
through the real CLI, the real engine and the unmodified sigstore verifier (lab CA).

Each attack leaves the containers and the applied state as they were, says why in `status`, and
the device recovers once the host serves the right tree again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from reconciler.core import published, release
from reconciler.device.control import SYNC_SIGNAL
from reconciler.fleet import lab_ca
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, http_get, metric, scrape
from testkit.images import ImageFactory
from testkit.nginx import Nginx, NginxUnavailable, TestCA
from testkit.registry import LocalRegistry
from testkit.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2"):
        registry.push(
            images.httpd(f"static-web-{version}", f"static {version}"), f"static/web:{version}"
        )
        refs[version] = f"{registry.address}/static/web:{version}"
    return refs


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def nginx(tmp_path: Path, test_ca: TestCA) -> Iterator[Nginx]:
    tree = tmp_path / "public"
    tree.mkdir()
    try:
        server = Nginx(tmp_path / "nginx", tree, tls=test_ca).start()
    except NginxUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


class Device:
    """A device polling the nginx tree over HTTPS, with one web app applied from release 1."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        docker_host: str,
        namespace: str,
        signer: LabSigner,
        nginx: Nginx,
        tls: TestCA,
        pages: dict[str, str],
        client: docker.DockerClient,
    ) -> None:
        self.nginx = nginx
        self.tree = nginx.root
        self.pages = pages
        self.client = client
        self.lab = DeviceLab(
            tmp_path / "lab",
            docker_host=docker_host,
            namespace=namespace,
            signer=signer,
            source_kind="static",
            source_url=nginx.https_url,
            extra_env={"SSL_CERT_FILE": str(tls.ca_file)},
        )
        self.port = self.lab.free_port()
        self.release("v1")
        first = self.lab.once()
        assert first.code == 0, first.out + first.err
        assert http_get(self.port) == "static v1"

    def release(self, image: str, **fields: object) -> None:
        """Commit a release of the web app on `image` (and `fields`), publish it into the tree."""
        web = {
            "name": "web",
            "image": self.pages[image],
            "ports": [f"127.0.0.1:{self.port}:80"],
            **fields,
        }
        self.lab.publish({"web": app_manifest("web", [web])}, message=image)
        run = self.lab.cli("publish", str(self.lab.fleet.root), str(self.tree))
        assert run.code == 0, run.out + run.err

    def latest(self) -> published.Latest:
        return published.parse_latest((self.tree / published.LATEST).read_bytes())

    def state(self) -> dict[str, object]:
        saved = json.loads((self.lab.state_dir / "state.json").read_text())
        return {k: saved[k] for k in ("release_version", "release_digest", "apps")}

    def refused(self, words: str, *, key: str = "last_error") -> None:
        """`once` fails, nothing changed, `status` says why."""
        before = self.state()
        run = self.lab.once()
        assert run.code == 1, run.out + run.err
        assert words in run.out, run.out + run.err
        assert self.state() == before
        assert http_get(self.port) == "static v1"
        assert words in str(self.lab.status()[key])

    def applies(self, page: str) -> None:
        run = self.lab.once()
        assert run.code == 0, run.out + run.err
        assert http_get(self.port) == page


@pytest.fixture
def device(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    lab_signer: LabSigner,
    nginx: Nginx,
    test_ca: TestCA,
    pages: dict[str, str],
    docker_client: docker.DockerClient,
) -> Device:
    return Device(
        tmp_path,
        docker_host=docker_host,
        namespace=namespace,
        signer=lab_signer,
        nginx=nginx,
        tls=test_ca,
        pages=pages,
        client=docker_client,
    )


def tree_files(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*")}


def test_publish_writes_the_tree_once_and_a_rerun_adds_nothing(device: Device):
    latest = device.latest()
    assert latest.version == 1
    data = (device.tree / published.release_path(1)).read_bytes()
    assert release.digest(data) == latest.sha256
    assert (device.tree / published.bundle_path(1)).is_file()
    for pin in release.parse(data).pins.values():
        assert (device.tree / published.blob_path(pin.sha256)).is_file()
    before = tree_files(device.tree)
    run = device.lab.cli("publish", str(device.lab.fleet.root), str(device.tree))
    assert run.code == 0 and "0 file(s) added" in run.out, run.out + run.err
    assert tree_files(device.tree) == before


def test_a_new_release_is_applied_over_https_and_unchanged_polls_are_304s_writing_nothing(
    device: Device,
):
    device.release("v2")
    device.applies("static v2")
    device.lab.write_config(
        source={
            "kind": "static",
            "url": device.nginx.https_url,
            "poll_interval": "1s",
            "jitter": 0,
        }
    )
    daemon = device.lab.start_daemon()
    try:
        deadline = time.monotonic() + 60
        while sum("304 GET /latest.json" in r for r in device.nginx.requests()) < 2:
            assert time.monotonic() < deadline, device.nginx.requests()
            assert daemon.poll() is None, device.lab.daemon_log.read_text()
            time.sleep(0.2)
        before = tree_files(device.lab.state_dir)
        polls = sum("304 GET /latest.json" in r for r in device.nginx.requests())
        while sum("304 GET /latest.json" in r for r in device.nginx.requests()) < polls + 3:
            assert time.monotonic() < deadline, device.nginx.requests()
            time.sleep(0.2)
        assert tree_files(device.lab.state_dir) == before
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    # The daemon's polls shared one kept-alive connection.
    conditional = [r.split() for r in device.nginx.requests() if r.startswith("304 ")]
    assert len({fields[3] for fields in conditional}) == 1, conditional
    assert http_get(device.port) == "static v2"


def test_a_corrupted_blob_is_refused_until_the_host_serves_the_right_one(device: Device):
    device.release("v2")
    data = (device.tree / published.release_path(2)).read_bytes()
    (blob_sha,) = [pin.sha256 for pin in release.parse(data).pins.values()]
    blob = device.tree / published.blob_path(blob_sha)
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b"static/web:v2", b"static/web:v1"))
    device.refused("changed after the release was signed", key="last_verification_failure")
    assert not list((device.lab.state_dir / "static").rglob(blob_sha))
    blob.write_bytes(good)
    device.applies("static v2")


def test_a_latest_json_pointing_at_garbage_is_a_fetch_failure_then_recovers(device: Device):
    device.release("v2")
    real = (device.tree / published.LATEST).read_bytes()
    bogus = published.Latest(version=99, sha256="e" * 64)
    (device.tree / published.LATEST).write_bytes(published.latest_bytes(bogus))
    device.refused("releases/99.json: not found")
    (device.tree / published.LATEST).write_bytes(b"<html>not a tree</html>")
    device.refused("latest.json: is not JSON")
    (device.tree / published.LATEST).write_bytes(real)
    device.applies("static v2")


def test_a_host_serving_an_older_tree_is_refused_as_a_rollback(device: Device):
    device.lab.source_url = device.nginx.http_url  # plain HTTP this time
    device.lab.write_config()
    old = device.tree.parent / "old-tree"
    shutil.copytree(device.tree, old)
    device.release("v2")
    device.applies("static v2")
    newer = device.state()
    shutil.rmtree(device.tree)
    shutil.copytree(old, device.tree)  # the host serves yesterday's tree, validly signed
    run = device.lab.once()
    assert run.code == 1, run.out + run.err
    assert "refusing a rollback" in run.out
    assert device.state() == newer
    assert http_get(device.port) == "static v2"
    assert "refusing a rollback" in str(device.lab.status()["last_verification_failure"])


def test_5xx_is_a_fetch_failure_a_mirror_takes_over_and_the_host_recovers(device: Device):
    device.release("v2")
    device.nginx.reload("location = /latest.json { return 503; }")
    device.refused("latest.json: HTTP 503")
    device.nginx.reload("")
    device.applies("static v2")
    device.release("v1")  # release 3, back on the v1 image
    device.nginx.reload("location / { return 502; }")
    device.lab.mirrors = [f"file://{device.tree}"]  # the same tree on a stick
    device.lab.write_config()
    run = device.lab.once()
    assert run.code == 0, run.out + run.err
    assert http_get(device.port) == "static v1"
    assert "fetch.failover" in run.err


def swap_release(device: Device, data: bytes, signer: LabSigner, *, version: int = 1) -> None:
    """The host serves `data` signed by `signer` as release `version`; latest.json names it."""
    from reconciler.fleet import lab_ca as ca

    bundle = ca.sign(signer.ca, data, identity=signer.identity, issuer=signer.issuer)
    (device.tree / published.release_path(version)).write_bytes(data)
    (device.tree / published.bundle_path(version)).write_bytes(bundle)
    latest = published.Latest(version=version, sha256=release.digest(data))
    (device.tree / published.LATEST).write_bytes(published.latest_bytes(latest))


def test_a_release_swapped_under_the_same_version_is_refused_as_an_equivocation(
    device: Device, lab_signer: LabSigner
):
    doc = json.loads((device.tree / published.release_path(1)).read_bytes())
    doc["expires"] = "2099-01-01T00:00:00Z"  # validly signed, other bytes, same version
    swap_release(device, json.dumps(doc).encode(), lab_signer)
    device.refused("refusing an equivocation", key="last_verification_failure")


def test_a_tree_signed_for_another_fleet_is_refused(
    device: Device, tmp_path_factory: pytest.TempPathFactory
):
    stranger = tmp_path_factory.mktemp("other-fleet") / "ca"
    lab_ca.init(stranger)
    doc = json.loads((device.tree / published.release_path(1)).read_bytes())
    doc["version"] = 2
    swap_release(device, json.dumps(doc).encode(), LabSigner(stranger), version=2)
    device.refused("signature does not verify", key="last_verification_failure")


def test_blobs_failing_with_5xx_keep_the_applied_state_until_the_host_recovers(device: Device):
    device.release("v2")
    device.nginx.reload("location /blobs/ { return 500; }")
    device.refused("blobs/sha256/")  # fetched only after the release verified
    assert "HTTP 500" in str(device.lab.status()["last_error"])
    device.nginx.reload("")
    device.applies("static v2")


# --- the attacks against a running daemon: its metrics, its status, its recovery ----------------


class Front:
    """127.0.0.1:port in front of nginx's plain HTTP port: forwards (`pass`), or plays a server
    nginx will not: an `endless` body, a `stall` mid-body, a `redirect` to another host.

    Switching the mode closes the open connections, so a kept-alive client meets the new one.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.switch("closed")
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(conn)
                mode = self.mode
            threading.Thread(target=self._answer, args=(conn, mode), daemon=True).start()

    def _answer(self, conn: socket.socket, mode: str) -> None:
        try:
            if mode == "pass":
                self._forward(conn)
                return
            conn.recv(65536)
            if mode == "endless":
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                while not self._stop.is_set():
                    conn.sendall(b"{" * 65536)
            elif mode == "stall":
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"version": ')
                self._stop.wait(60)
            elif mode == "redirect":
                conn.sendall(
                    b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/latest.json\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )
                conn.recv(65536)
        except OSError:
            pass
        finally:
            self._forget(conn)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        with self._lock:
            self._open.add(upstream)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        self._forget(upstream)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()


@pytest.fixture
def front(nginx: Nginx) -> Iterator[Front]:
    server = Front(nginx.port)
    yield server
    server.close()


def test_each_attack_moves_the_daemons_metrics_names_its_reason_and_the_device_recovers(
    device: Device,
    front: Front,
    tmp_path_factory: pytest.TempPathFactory,
    lab_signer: LabSigner,
    daemons: list[subprocess.Popen[bytes]],
):
    """One daemon, nine attacks in a row (SPEC 2.4: a host that lies can only withhold, replay
    or corrupt). Before each, a new release is published; the attack keeps it from the device;
    once the host is fixed the release is applied and the error cleared."""
    lab = device.lab
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.source_url = front.url
    # Only `sync` cycles (an hour's poll); each read may take 3 s, so a stall costs 3 s.
    lab.write_config(
        source={"kind": "static", "url": front.url, "poll_interval": "1h", "timeout": "3s"}
    )
    daemon = lab.start_daemon()
    daemons.append(daemon)
    fetch_errors = f'reconciler_fetch_errors_total{{remote="{front.url}"}}'
    images = itertools.cycle(["v2", "v1"])
    stranger = tmp_path_factory.mktemp("stranger") / "ca"
    lab_ca.init(stranger)

    def saved_error() -> object:
        return json.loads((lab.state_dir / "state.json").read_text())["last_error"]

    def scraped(series: str) -> float:
        return metric(scrape(lab), series)

    def refused_by(series: str, words: str, key: str) -> None:
        """`sync`; the counter rises by one, nothing is applied, `status` says why."""
        counters = scrape(lab)
        before = {s: metric(counters, s) for s in (series, fetch_errors, *verification)}
        daemon.send_signal(SYNC_SIGNAL)  # what `reconciler sync` sends
        eventually(lambda: scraped(series) == before[series] + 1, f"{series} to rise")
        eventually(lambda: words in str(lab.status()[key]), f"{words!r} in status {key}")
        after = scrape(lab)
        for other in set(before) - {series}:  # the other counters stay where they were
            assert metric(after, other) == before[other], other
        assert http_get(device.port) == applied[-1]

    def recovers() -> None:
        """The host fixed: the newest release is applied and the error cleared."""
        daemon.send_signal(SYNC_SIGNAL)
        eventually(lambda: http_get(device.port, timeout=0.5) == pending[-1], pending[-1])
        # state.json, which `status` shows: one CLI run fewer per attack on a loaded machine.
        eventually(lambda: saved_error() is None, "last_error cleared")
        applied.append(pending[-1])

    verification = [
        f'reconciler_verification_failures_total{{reason="{reason}"}}'
        for reason in ("rollback", "invalid_signature", "pin_mismatch", "equivocation")
    ]
    applied = ["static v1"]
    pending: list[str] = []

    def next_release() -> None:
        """A release no other one has the manifest of: its blob is new to the device."""
        image = next(images)
        device.release(image, env={"RELEASE": len(pending)})
        pending.append(f"static {image}")

    eventually(lambda: scraped('reconciler_cycles_total{result="unchanged"}') == 1, "started")

    # A host serving yesterday's tree, validly signed: a rollback.
    yesterday = device.tree.parent / "yesterday"
    shutil.copytree(device.tree, yesterday)
    next_release()
    recovers()
    today = device.tree.parent / "today"
    shutil.copytree(device.tree, today)
    shutil.rmtree(device.tree)
    shutil.copytree(yesterday, device.tree)
    refused_by(verification[0], "refusing a rollback", "last_verification_failure")
    shutil.rmtree(device.tree)
    shutil.copytree(today, device.tree)
    next_release()
    recovers()

    # A tree from another fleet: the next version, signed by a stranger's CA.
    next_release()
    real_latest = (device.tree / published.LATEST).read_bytes()
    version = device.latest().version
    real = {
        rel: (device.tree / rel).read_bytes()
        for rel in (published.release_path(version), published.bundle_path(version))
    }
    doc = json.loads(real[published.release_path(version)])
    forged = json.dumps({**doc, "expires": "2099-01-01T00:00:00Z"}).encode()
    swap_release(device, forged, LabSigner(stranger), version=version)
    refused_by(verification[1], "signature does not verify", "last_verification_failure")
    for rel, data in real.items():
        (device.tree / rel).write_bytes(data)
    (device.tree / published.LATEST).write_bytes(real_latest)
    recovers()

    # A corrupted blob in the next release.
    next_release()
    data = (device.tree / published.release_path(device.latest().version)).read_bytes()
    (blob_sha,) = [pin.sha256 for pin in release.parse(data).pins.values()]
    blob = device.tree / published.blob_path(blob_sha)
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b"static/web:", b"static/evil:"))
    refused_by(verification[2], "changed after the release was signed", "last_verification_failure")
    blob.write_bytes(good)
    recovers()

    # The applied release swapped under its own name: an equivocation.
    applied_version = device.latest().version
    real_latest = (device.tree / published.LATEST).read_bytes()
    real = {
        rel: (device.tree / rel).read_bytes()
        for rel in (
            published.release_path(applied_version),
            published.bundle_path(applied_version),
        )
    }
    doc = json.loads(real[published.release_path(applied_version)])
    swapped = json.dumps({**doc, "expires": "2099-01-01T00:00:00Z"}).encode()
    swap_release(device, swapped, lab_signer, version=applied_version)
    refused_by(verification[3], "refusing an equivocation", "last_verification_failure")
    for rel, data in real.items():
        (device.tree / rel).write_bytes(data)
    (device.tree / published.LATEST).write_bytes(real_latest)
    next_release()
    recovers()

    # Hosts that fail the fetch: each a fetch error of the remote, the applied state kept.
    latest = device.tree / published.LATEST

    def garbage() -> None:
        latest.write_bytes(b"<html>")

    def http_503() -> None:
        device.nginx.reload("location = /latest.json { return 503; }")

    def fixed_nginx() -> None:
        device.nginx.reload("")

    def fronted(mode: str) -> Callable[[], None]:
        return lambda: front.switch(mode)

    redirected = "redirected (HTTP 302) to http://elsewhere.example/latest.json; not followed"
    for words, attack, fix in [
        ("latest.json: is not JSON", garbage, None),
        ("latest.json: HTTP 503", http_503, fixed_nginx),
        ("over the limit", fronted("endless"), fronted("pass")),
        ("timed out after 3s", fronted("stall"), fronted("pass")),
        (redirected, fronted("redirect"), fronted("pass")),
    ]:
        next_release()
        kept = latest.read_bytes()
        attack()
        refused_by(fetch_errors, words, "last_error")
        if fix is not None:
            fix()
        latest.write_bytes(kept)
        recovers()

    text = scrape(lab)
    assert metric(text, 'reconciler_source_requests_total{result="error"}') == 5
    assert all(metric(text, series) == 1 for series in verification)
