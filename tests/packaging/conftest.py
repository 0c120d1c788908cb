"""Fixtures for the packaging tests: the cached Debian base, the package built once per session,
and a device lab (fleet repo, one app image in the loopback registry) for `reconciler once`.

Building needs root, debootstrap and dpkg-deb, plus deb.debian.org and PyPI the first time (the
apt archive and pip cache under /var/cache/reconciler-test make later runs offline). Without them
the tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from tests.infra.images import ImageFactory
from tests.infra.registry import LocalRegistry
from tests.integration.device_lab import DeviceLab, app_manifest
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


def build_deb(base: Path, out: Path, *args: str, arch: str | None = None) -> Path:
    """packaging/build-deb.sh on `base` into `out`; the package it wrote."""
    result = subprocess.run(
        [
            str(chroots.PACKAGING / "build-deb.sh"),
            "--base",
            str(base),
            "--out",
            str(out),
            "--apt-cache",
            str(chroots.apt_cache(arch)),
            "--pip-cache",
            str(chroots.pip_cache()),
            "--xz-level",
            "2",  # 4 s instead of 19 s, for a deb 2 MB larger
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, f"build-deb.sh failed:\n{result.stderr}"
    (built,) = out.glob("reconciler_*.deb")
    assert result.stdout.strip().splitlines()[-1] == str(built)
    return built


@pytest.fixture(scope="session")
def deb(base_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reconciler_*.deb built from this checkout by packaging/build-deb.sh."""
    return build_deb(base_tarball, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def rebuilt_deb(deb: Path, base_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same commit built a second time, later, in another directory."""
    return build_deb(base_tarball, tmp_path_factory.mktemp("deb-again"))


@pytest.fixture(scope="module")
def app_image(images: ImageFactory, registry: LocalRegistry) -> str:
    """A web page image pushed to the loopback registry; its pull reference."""
    local = images.httpd("packaging-web", "packaged")
    registry.push(local, "packaging/web:v1")
    return f"{registry.address}/packaging/web:v1"


def publish_one_app(lab: DeviceLab, image: str) -> None:
    """Commit an unsigned (or, with `lab.signer`, signed) release of one app, `web`."""
    lab.publish({"web": app_manifest("web", [{"name": "web", "image": image}])})
