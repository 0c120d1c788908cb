"""USB delivery end to end (SPEC 3.1, 2.4): the origin is down, a stick with a newer signed tree
is inserted, and the running daemon applies it without waiting for its poll.

A real `reconciler run` on the real engine; the origin is nginx over plain HTTP; the stick is
a directory under `media/` that is not there when the daemon starts (its mirror points into
it), written by `reconciler publish` elsewhere and moved into place at once, as a mount makes
a stick's files appear. The poll interval is an hour, so only the watch can explain a cycle.
Tampered sticks (a release signed by another identity, a blob changed) are refused with the
reason in `status` and the metrics; the right stick is then applied, though the same release
was refused before. Watching adds no writes: a cycle the stick wakes with nothing new writes
nothing to state_dir. A tree copied onto the stick slowly is applied once its latest.json
comes, the cycles woken before only failing to fetch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.core import published, release
from reconciler.device import wakeups
from reconciler.fleet import lab_ca
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, http_get, metric, scrape
from testkit.images import ImageFactory
from testkit.nginx import Nginx, NginxUnavailable
from testkit.registry import LocalRegistry
from testkit.waiting import eventually

pytestmark = pytest.mark.docker

WAIT = 60.0  # generous for a loaded machine; each wait ends as soon as it holds


@pytest.fixture(scope="module")
def pages(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    refs = {}
    for version in ("v1", "v2", "v3"):
        registry.push(images.httpd(f"usb-web-{version}", f"usb {version}"), f"usb/web:{version}")
        refs[version] = f"{registry.address}/usb/web:{version}"
    return refs


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Nginx]:
    tree = tmp_path / "public"
    tree.mkdir()
    try:
        server = Nginx(tmp_path / "nginx", tree).start()
    except NginxUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def state_files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path's mtime and size: any write, a temp file renamed over included, shows."""
    found = {".": (directory.stat().st_mtime_ns, 0)}
    for path in directory.rglob("*"):
        found[str(path)] = (path.stat().st_mtime_ns, path.stat().st_size)
    return found


class Stick:
    """The device's lab, its origin, and a USB stick slot at `media/usb` (empty at first)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        docker_host: str,
        namespace: str,
        signer: LabSigner,
        origin: Nginx,
        pages: dict[str, str],
    ) -> None:
        self.root = tmp_path
        self.origin = origin
        self.pages = pages
        self.signer = signer
        media = tmp_path / "media"
        media.mkdir()
        self.slot = media / "usb"
        self.lab = DeviceLab(
            tmp_path / "lab",
            docker_host=docker_host,
            namespace=namespace,
            signer=signer,
            source_kind="static",
            source_url=origin.http_url,
            mirrors=[f"file://{self.slot}/fleet"],
        )
        self.lab.metrics_listen = f"127.0.0.1:{self.lab.free_port()}"
        self.lab.write_config()  # poll_interval: 1h
        self.port = self.lab.free_port()
        self.sticks = 0

    def release(self, image: str) -> None:
        web = {"name": "web", "image": self.pages[image], "ports": [f"127.0.0.1:{self.port}:80"]}
        self.lab.publish({"web": app_manifest("web", [web])}, message=image)

    def publish(self, out: Path) -> None:
        run = self.lab.cli("publish", str(self.lab.fleet.root), str(out))
        assert run.code == 0, run.out + run.err

    def prepared(self) -> Path:
        """A stick prepared on another machine: the current release published onto it."""
        self.sticks += 1
        stick = self.root / f"stick-{self.sticks}"
        self.publish(stick / "fleet")
        return stick / "fleet"

    def insert(self, tree: Path) -> None:
        """All of the stick's files appear at once, as a mount makes them appear."""
        os.rename(tree.parent, self.slot)

    def eject(self) -> None:
        os.rename(self.slot, self.root / f"ejected-{self.sticks}")

    def metrics(self) -> str:
        return scrape(self.lab)

    def count(self, series: str) -> float:
        return metric(self.metrics(), series)

    def served(self, page: str) -> Callable[[], bool]:
        return lambda: http_get(self.port, timeout=0.5) == page

    def refused(self, words: str) -> None:
        """`status` names why (saved just after the metric counts it: waited for)."""
        eventually(
            lambda: words in str(self.lab.status()["last_verification_failure"]),
            f"{words!r} in status",
        )

    def applied_version(self) -> object:
        return json.loads((self.lab.state_dir / "state.json").read_text())["release_version"]

    def triggers(self) -> list[str]:
        lines = self.lab.daemon_log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [str(r.get("trigger")) for r in records if r.get("event") == "cycle.start"]

    def cycles(self) -> float:
        text = self.metrics()
        return sum(
            metric(text, f'reconciler_cycles_total{{result="{result}"}}')
            for result in ("converged", "unchanged", "failed", "rolled_back")
        )


@pytest.fixture
def stick(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    lab_signer: LabSigner,
    origin: Nginx,
    pages: dict[str, str],
) -> Stick:
    return Stick(
        tmp_path,
        docker_host=docker_host,
        namespace=namespace,
        signer=lab_signer,
        origin=origin,
        pages=pages,
    )


def test_a_stick_inserted_while_the_origin_is_down_is_applied_and_tampered_sticks_are_refused(
    stick: Stick, daemons: list[subprocess.Popen[bytes]]
):
    origin_remote = stick.origin.http_url
    changed = 'reconciler_source_requests_total{result="changed"}'
    not_modified = 'reconciler_source_requests_total{result="not_modified"}'
    stick.release("v1")
    stick.publish(stick.origin.root)
    daemons.append(stick.lab.start_daemon())
    eventually(stick.served("usb v1"), "release 1 applied from the origin on start")
    eventually(lambda: stick.cycles() >= 1, "the first cycle counted")

    # The origin goes down; a stick with release 2 comes. Nothing polls for an hour.
    stick.origin.stop()
    stick.release("v2")
    stick.insert(stick.prepared())
    eventually(stick.served("usb v2"), "release 2 applied from the stick")
    eventually(lambda: stick.applied_version() == 2, "release 2 recorded")
    assert "local fleet source changed" in stick.triggers()
    assert stick.count(changed) == 2
    assert stick.count(f'reconciler_fetch_errors_total{{remote="{origin_remote}"}}') >= 1
    assert stick.lab.status()["last_error"] is None

    # Watching writes nothing: a cycle the stick wakes with nothing new leaves state_dir as is.
    eventually(lambda: stick.cycles() == 2, "the start's cycle and the stick's, counted")
    time.sleep(2)
    settled = stick.cycles()
    assert settled == 2  # the stick woke one cycle, and no cycle wakes another
    before = state_files(stick.lab.state_dir)
    polls = stick.count(not_modified)
    latest = stick.slot / "fleet" / published.LATEST
    latest.write_bytes(latest.read_bytes())  # the same latest.json written again
    eventually(lambda: stick.count(not_modified) == polls + 1, "an unchanged cycle from the stick")
    eventually(lambda: stick.cycles() == settled + 1, "that cycle counted")
    assert state_files(stick.lab.state_dir) == before

    # Release 3 on a stick whose bundle another identity signed: refused, nothing applied.
    stick.eject()
    stick.release("v3")
    forged = stick.prepared()
    data = (forged / published.release_path(3)).read_bytes()
    (forged / published.bundle_path(3)).write_bytes(
        lab_ca.sign(
            stick.signer.ca,
            data,
            identity="https://ci.example.test/someone-else/release.yml@refs/heads/main",
            issuer=stick.signer.issuer,
        )
    )
    stick.insert(forged)
    wrong_identity = 'reconciler_verification_failures_total{reason="wrong_identity"}'
    eventually(lambda: stick.count(wrong_identity) == 1, "the forged stick refused")
    stick.refused("signed by an identity that is not trusted")
    assert http_get(stick.port) == "usb v2"

    # Release 3 with its blob changed on the stick: refused by its pin.
    stick.eject()
    tampered = stick.prepared()
    (pin,) = release.parse(data).pins.values()
    blob = tampered / published.blob_path(pin.sha256)
    blob.write_bytes(blob.read_bytes().replace(b"usb/web:v3", b"usb/web:v1"))
    stick.insert(tampered)
    pin_mismatch = 'reconciler_verification_failures_total{reason="pin_mismatch"}'
    eventually(lambda: stick.count(pin_mismatch) == 1, "the tampered stick refused")
    stick.refused("changed after the release was signed")
    assert http_get(stick.port) == "usb v2"
    assert stick.applied_version() == 2

    # The right stick: release 3, refused twice before, is applied.
    stick.eject()
    stick.insert(stick.prepared())
    eventually(stick.served("usb v3"), "release 3 applied from the right stick")
    eventually(lambda: stick.lab.status()["last_error"] is None, "the error cleared")
    assert stick.count(wrong_identity) == 1 and stick.count(pin_mismatch) == 1
    errors = 'reconciler_source_requests_total{result="error"}'
    assert stick.count(errors) == 0

    # Release 4 copied onto a stick slowly, in the order `publish` writes (latest.json last):
    # the cycles the copy wakes early find no tree, a fetch error, never a refusal.
    stick.eject()
    stick.release("v1")
    source = stick.prepared()
    copy = stick.slot / "fleet"
    copy.mkdir(parents=True)
    for part in ("blobs", "releases"):
        shutil.copytree(source / part, copy / part)
        time.sleep(2 * wakeups.SOURCE_QUIET)  # quiet long enough for the watch to cycle
    eventually(lambda: stick.count(errors) >= 1, "a cycle woken before latest.json came")
    shutil.copy(source / published.LATEST, copy / published.LATEST)
    eventually(stick.served("usb v1"), "release 4 applied once latest.json came")
    assert stick.count(wrong_identity) == 1 and stick.count(pin_mismatch) == 1
    eventually(lambda: stick.lab.status()["last_error"] is None, "the error cleared")
