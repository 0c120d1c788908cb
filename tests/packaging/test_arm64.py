"""The arm64 package, built on this (amd64) machine with the arm64 build chroot under qemu-user.

Opt-in (RECONCILER_TEST_ARM64=1): the arm64 base takes ~15 minutes to bootstrap under qemu the
first time (cached after), the build and the install about half an hour. Needs Debian's
qemu-user-static and binfmt-support with the qemu-aarch64 handler registered
(scripts/install.sh). The package is built by the same build-deb.sh from an arm64 base,
installed with apt into a fresh arm64 chroot, and run there: its interpreter, its wheels'
extension modules and the CLI under emulation.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging import chroots
from tests.packaging.chroots import Chroot
from tests.packaging.conftest import build_deb, unavailable
from tests.packaging.test_deb import SITE_PACKAGES, control_fields

ARCH = "arm64"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


@pytest.fixture(scope="module")
def arm64_base(packaging_host: None) -> Path:
    if os.environ.get("RECONCILER_TEST_ARM64") != "1":
        pytest.skip("arm64 packaging runs with RECONCILER_TEST_ARM64=1 (~30 min under qemu)")
    if chroots.architecture() != ARCH and (
        not BINFMT.exists() or not BINFMT.read_text().startswith("enabled")
    ):
        unavailable("no qemu-aarch64 binfmt handler (qemu-user-static, binfmt-support)")
    return chroots.base_tarball(arch=ARCH, timeout=3600)


@pytest.fixture(scope="module")
def arm64_deb(arm64_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(arm64_base, tmp_path_factory.mktemp("deb-arm64"), arch=ARCH)


@pytest.fixture
def arm64_debian(arm64_base: Path, tmp_path: Path) -> Iterator[Chroot]:
    chroot = Chroot.extract(arm64_base, tmp_path / "root", arch=ARCH)
    yield chroot
    chroot.remove()


def test_the_arm64_package_holds_arm64_code_only(arm64_deb: Path, tmp_path: Path):
    fields = control_fields(arm64_deb)
    assert fields["Architecture"] == ARCH
    assert arm64_deb.name.endswith("+deb12_arm64.deb")
    subprocess.run(["dpkg-deb", "--extract", str(arm64_deb), str(tmp_path)], check=True)
    objects = sorted((tmp_path / SITE_PACKAGES.lstrip("/")).rglob("*.so*"))
    assert len(objects) >= 5
    for shared in objects:
        header = subprocess.run(
            ["readelf", "-h", str(shared)], capture_output=True, text=True, check=True
        ).stdout
        assert "AArch64" in header, shared.name


def test_apt_installs_the_arm64_package_on_arm64_debian_where_it_runs(
    arm64_debian: Chroot, arm64_deb: Path
):
    chroot = arm64_debian
    (chroot.root / "tmp" / arm64_deb.name).write_bytes(arm64_deb.read_bytes())
    install = chroot.apt_get("install", "--no-install-recommends", f"/tmp/{arm64_deb.name}")
    assert install.returncode == 0, install.stdout + install.stderr
    machine = chroot.run("uname", "-m")
    assert machine.stdout.strip() == "aarch64"  # emulated: the chroot's own programs
    loads = chroot.run(
        "/usr/lib/reconciler/bin/python",
        "-c",
        "import cryptography.hazmat.bindings._rust, yaml._yaml, pydantic_core, watchfiles,"
        " rfc3161_client, sigstore.verify; print('loaded')",
    )
    assert loads.stdout.strip() == "loaded", loads.stderr
    shipped = chroot.run("reconciler", "once")
    assert shipped.returncode == 2, shipped.stderr
    assert "/etc/reconciler/config.yaml: source.url: missing required key" in shipped.stderr
