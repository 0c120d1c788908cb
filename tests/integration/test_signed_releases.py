"""Signed releases on the device (SPEC 2.2): one test per attack, against the real engine, Git
and the unmodified sigstore Verifier, with a lab CA as the hermetic signer.

Every refusal must leave the state and the containers exactly as they were, say why in
`status`, and name the attack's metric reason.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest

from reconciler import model
from reconciler.core import release
from reconciler.fleet import lab_ca
from testkit.device_lab import (
    DeviceLab,
    LabSigner,
    app_manifest,
    http_get,
    metric,
    scrape,
)
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2"):
        registry.push(
            images.httpd(f"signed-web-{version}", f"signed {version}"), f"s/web:{version}"
        )
        refs[version] = f"{registry.address}/s/web:{version}"
    return refs


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trusted lab CA and a second one the device does not trust."""
    found = {}
    for name in ("trusted", "stranger"):
        directory = tmp_path_factory.mktemp("ca") / name
        lab_ca.init(directory)
        found[name] = directory
    return found


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str, cas: dict[str, Path]) -> DeviceLab:
    return DeviceLab(
        tmp_path, docker_host=docker_host, namespace=namespace, signer=LabSigner(cas["trusted"])
    )


class Device:
    """The lab with one web app applied from a verified release 1."""

    def __init__(self, lab: DeviceLab, pages: dict[str, str], client: docker.DockerClient):
        self.lab = lab
        self.pages = pages
        self.client = client
        self.port = lab.free_port()
        self.web = {"name": "web", "image": pages["v1"], "ports": [f"127.0.0.1:{self.port}:80"]}
        lab.publish({"web": app_manifest("web", [self.web])})
        first = lab.once()
        assert first.code == 0, first.err
        assert http_get(self.port) == "signed v1"
        self.before = self.snapshot()

    def manifest(self, image: str = "v2") -> str:
        return app_manifest("web", [{**self.web, "image": self.pages[image]}])

    def snapshot(self) -> tuple[object, ...]:
        label = {"label": f"{model.LABEL_NAMESPACE}={self.lab.namespace}"}
        containers = sorted(c.id for c in self.client.containers.list(all=True, filters=label))
        saved = json.loads((self.lab.state_dir / "state.json").read_text())
        kept = {k: saved[k] for k in ("release_version", "release_digest", "commit", "apps")}
        return tuple(containers), kept

    def refused(self, reason_words: str) -> None:
        """`once` refuses: exit 1, nothing changed, status says why."""
        run = self.lab.once()
        assert run.code == 1, run.out + run.err
        assert self.snapshot() == self.before
        assert http_get(self.port) == "signed v1"
        status = self.lab.status()
        assert reason_words in str(status["last_verification_failure"]), status
        assert reason_words in run.out

    def commit_raw(self, files: dict[str, bytes], message: str = "raw") -> None:
        for rel, data in files.items():
            self.lab.fleet.write(rel, data)
        self.lab.fleet.commit(message)


@pytest.fixture
def device(lab: DeviceLab, pages: dict[str, str], docker_client: docker.DockerClient) -> Device:
    return Device(lab, pages, docker_client)


def release_bytes(lab: DeviceLab) -> bytes:
    return (lab.fleet.root / release.RELEASE_PATH).read_bytes()


def test_a_verified_release_is_applied(device: Device):
    status = device.lab.status()
    assert status["release_version"] == 1
    assert status["last_verification_failure"] is None
    device.lab.publish({"web": device.manifest("v2")})
    assert device.lab.once().code == 0
    assert http_get(device.port) == "signed v2"


def test_unsigned_release(device: Device):
    device.lab.signer = None  # CI forgot to sign: release.json without a bundle
    device.lab.publish({"web": device.manifest("v2")})
    (device.lab.fleet.root / release.BUNDLE_PATH).unlink()
    device.lab.fleet.commit("unsigned")
    device.refused("not signed")


def test_tampered_release(device: Device):
    device.lab.publish({"web": device.manifest("v2")})
    data = json.loads(release_bytes(device.lab))
    data["expires"] = "2099-01-01T00:00:00Z"  # an attacker extends a release
    device.commit_raw({release.RELEASE_PATH: json.dumps(data).encode()})
    device.refused("signature does not verify")


def test_tampered_manifest(device: Device):
    device.lab.publish({"web": device.manifest("v2")})
    evil = device.manifest("v2") + "# an attacker's change after the release was signed\n"
    device.commit_raw({"apps/web/app.yaml": evil.encode()})
    device.refused("does not match")


def test_a_manifest_the_release_does_not_list_is_ignored(device: Device):
    device.lab.publish({"web": device.manifest("v2")})
    other_port = device.lab.free_port()
    intruder = app_manifest(
        "intruder",
        [{"name": "web", "image": device.pages["v1"], "ports": [f"127.0.0.1:{other_port}:80"]}],
    )
    device.commit_raw({"apps/intruder/app.yaml": intruder.encode()})
    run = device.lab.once()
    assert run.code == 0, run.err
    assert http_get(device.port) == "signed v2"
    assert http_get(other_port, timeout=1) is None
    assert [a["name"] for a in device.lab.status()["apps"]] == ["web"]


def test_wrong_identity(device: Device, cas: dict[str, Path]):
    device.lab.publish({"web": device.manifest("v2")})
    someone = LabSigner(cas["trusted"], identity="mallory@example.test")
    device.lab.sign(release_bytes(device.lab), someone)
    device.lab.fleet.commit("signed by someone else")
    device.refused("not trusted")


def test_wrong_issuer(device: Device, cas: dict[str, Path]):
    device.lab.publish({"web": device.manifest("v2")})
    right_name_wrong_issuer = LabSigner(
        cas["trusted"], identity=device.lab.signer.identity, issuer="https://evil.example.test"
    )
    device.lab.sign(release_bytes(device.lab), right_name_wrong_issuer)
    device.lab.fleet.commit("other issuer")
    device.refused("not trusted")


def test_a_bundle_from_an_untrusted_ca(device: Device, cas: dict[str, Path]):
    device.lab.publish({"web": device.manifest("v2")})
    device.lab.sign(release_bytes(device.lab), LabSigner(cas["stranger"]))
    device.lab.fleet.commit("signed by another CA")
    device.refused("signature does not verify")


def test_rollback_to_a_lower_version(device: Device):
    old_commit = device.lab.fleet.head()
    device.lab.publish({"web": device.manifest("v2")})
    assert device.lab.once().code == 0
    device.before = device.snapshot()
    # The server serves an old, validly signed release again (a replay).
    device.lab.fleet.git("reset", "-q", "--hard", old_commit)
    run = device.lab.once()
    assert run.code == 1
    assert "refusing a rollback" in run.out
    assert device.snapshot() == device.before
    assert http_get(device.port) == "signed v2"


def test_equivocation_same_version_other_bytes(device: Device):
    data = json.loads(release_bytes(device.lab))
    data["expires"] = "2099-01-01T00:00:00Z"  # version 1 again, other bytes, validly signed
    forged = json.dumps(data, indent=1).encode()
    device.lab.fleet.write(release.RELEASE_PATH, forged)
    device.lab.sign(forged)
    device.lab.fleet.commit("version 1, second edition")
    device.refused("refusing an equivocation")


def test_an_expired_release_blocks_new_applies_but_keeps_running_apps(device: Device):
    long_ago = datetime.now(UTC) - timedelta(days=40)
    device.lab.publish({"web": device.manifest("v2")}, now=long_ago, expires_in=86400)
    device.refused("expired")


def test_an_app_is_pruned_only_when_a_verified_release_drops_it(device: Device):
    device.lab.publish({"web": None})  # a verified release without the app...
    data = release_bytes(device.lab)
    (device.lab.fleet.root / release.BUNDLE_PATH).write_bytes(b'{"not": "a bundle"}')
    device.lab.fleet.commit("...whose signature is broken")
    device.refused("bundle")

    device.lab.sign(data)
    device.lab.fleet.commit("now signed")
    assert device.lab.once().code == 0
    assert http_get(device.port, timeout=1) is None
    assert device.lab.status()["apps"] == []


def test_a_mirror_serving_old_or_altered_content_changes_nothing(device: Device, tmp_path: Path):
    lab = device.lab
    stale_mirror = tmp_path / "stale-mirror"
    lab.fleet.git("clone", "-q", "--bare", str(lab.fleet.root), str(stale_mirror))
    lab.publish({"web": device.manifest("v2")})
    assert lab.once().code == 0
    device.before = device.snapshot()

    lab.source_url = str(tmp_path / "primary-down")
    lab.mirrors = [str(stale_mirror)]
    lab.write_config()
    run = lab.once()  # the mirror replays release 1
    assert run.code == 1 and "refusing a rollback" in run.out
    assert device.snapshot() == device.before

    altered = tmp_path / "altered-mirror"
    lab.fleet.git("clone", "-q", "--bare", str(lab.fleet.root), str(altered))
    work = tmp_path / "altered-work"
    lab.fleet.git("clone", "-q", str(altered), str(work))
    (work / "apps/web/app.yaml").write_text(device.manifest("v1") + "# altered\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", "altered"], ["push", "-q"]):
        subprocess.run(["git", "-C", str(work), *args], check=True, env=lab.env())
    lab.mirrors = [str(altered)]
    lab.write_config()
    run = lab.once()
    assert run.code == 1 and "does not match" in run.out
    assert device.snapshot() == device.before
    assert http_get(device.port) == "signed v2"


def test_each_refusal_is_counted_by_reason_in_the_metrics(device: Device):
    lab = device.lab
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config()
    lab.publish({"web": device.manifest("v2")})
    data = json.loads(release_bytes(lab))
    data["expires"] = "2099-01-01T00:00:00Z"
    device.commit_raw({release.RELEASE_PATH: json.dumps(data).encode()})
    process = lab.start_daemon()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = scrape(lab)
            refused = metric(
                text, 'reconciler_verification_failures_total{reason="invalid_signature"}'
            )
            if refused and metric(text, "reconciler_release_version") == 1:  # cycle fully done
                break
            time.sleep(0.2)
        else:
            pytest.fail("no invalid_signature failure counted:\n" + scrape(lab))
        assert "reconciler_trust_disabled 0.0" in text
        assert "reconciler_release_version 1.0" in text
        assert "reconciler_release_expired 0.0" in text

        long_ago = datetime.now(UTC) - timedelta(days=40)
        lab.publish({"web": device.manifest("v2")}, now=long_ago, expires_in=86400)
        assert lab.cli("sync").code == 0
        while time.monotonic() < deadline + 60:
            text = scrape(lab)
            expired = metric(text, 'reconciler_verification_failures_total{reason="expired"}')
            if metric(text, "reconciler_release_expired") == 1 and expired:
                break
            time.sleep(0.2)
        else:
            pytest.fail("an expired release did not set reconciler_release_expired:\n" + text)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert device.snapshot() == device.before


@pytest.fixture(autouse=True)
def _no_daemon_left(lab: DeviceLab) -> Iterator[None]:
    yield
    pid_file = lab.state_dir / "daemon.pid"
    assert not pid_file.exists(), "a daemon was left running"
