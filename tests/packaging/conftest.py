"""Fixtures for the packaging tests: the cached Debian base, the package built once per session,
and a device lab (fleet repo, one app image in the loopback registry) for `reconciler once`.

Building needs root, debootstrap and dpkg-deb, plus deb.debian.org and PyPI the first time (the
apt archive and pip cache under /var/cache/reconciler-test make later runs offline). Without them
the tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from testkit.device_lab import DeviceLab, app_manifest
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry
from tests.packaging import chroots


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: packaging tests must run there, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def packaging_host() -> None:
    """Root with debootstrap, dpkg-deb, unshare and chroot; else skip (fail under CI)."""
    try:
        chroots.check_host()
    except chroots.PackagingUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def base_tarball(packaging_host: None) -> Path:
    """The cached minimal Debian rootfs (packaging/base-rootfs.sh), shared by every test here."""
    return chroots.base_tarball()


class DebBuild:
    """packaging/build-deb.sh on `base` into `out`, running in the background."""

    def __init__(
        self, base: Path, out: Path, *, arch: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.out = out
        command = [
            str(chroots.PACKAGING / "build-deb.sh"),
            *("--base", str(base), "--out", str(out)),
            *("--apt-cache", str(chroots.apt_cache(arch)), "--pip-cache", str(chroots.pip_cache())),
            *("--xz-level", "2"),  # 4 s instead of 19 s, for a deb 2 MB larger
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def result(self, timeout: float = 1800) -> Path:
        """The package it wrote (waiting for it)."""
        stdout, stderr = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"build-deb.sh failed:\n{stderr}"
        (built,) = self.out.glob("reconciler_*.deb")
        assert stdout.strip().splitlines()[-1] == str(built)
        return built

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # its EXIT trap unmounts and removes its work tree
        # Also when it finished unread: communicate() closes its pipes (else they leak into
        # whichever later test the garbage collector runs in, as ResourceWarnings).
        self.process.communicate(timeout=120)


def build_deb(base: Path, out: Path, *, arch: str | None = None) -> Path:
    return DebBuild(base, out, arch=arch).result()


@pytest.fixture(scope="session")
def deb_builds(
    base_tarball: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DebBuild, DebBuild]]:
    """Two builds of this checkout, side by side (two cores make that faster than in turn):
    the second starts a few seconds later, in another time zone, with another umask, so that
    build time, TZ or umask leaking into the package makes them differ."""
    first = DebBuild(base_tarball, tmp_path_factory.mktemp("deb"))
    time.sleep(3)
    old_umask = os.umask(0o002)
    try:
        second = DebBuild(
            base_tarball, tmp_path_factory.mktemp("deb-again"), env={"TZ": "Asia/Tokyo"}
        )
    finally:
        os.umask(old_umask)
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="session")
def deb(deb_builds: tuple[DebBuild, DebBuild]) -> Path:
    """reconciler_*.deb built from this checkout by packaging/build-deb.sh."""
    return deb_builds[0].result()


@pytest.fixture(scope="session")
def rebuilt_deb(deb_builds: tuple[DebBuild, DebBuild]) -> Path:
    """The same commit built a second time, in another directory, time zone and umask."""
    return deb_builds[1].result()


@pytest.fixture(scope="module")
def app_image(images: ImageFactory, registry: LocalRegistry) -> str:
    """A web page image pushed to the loopback registry; its pull reference."""
    local = images.httpd("packaging-web", "packaged")
    registry.push(local, "packaging/web:v1")
    return f"{registry.address}/packaging/web:v1"


def publish_one_app(lab: DeviceLab, image: str) -> None:
    """Commit an unsigned (or, with `lab.signer`, signed) release of one app, `web`."""
    lab.publish({"web": app_manifest("web", [{"name": "web", "image": image}])})
