"""The Debian package from packaging/build-deb.sh: what it holds, and its life on a bare Debian.

The install test takes a fresh copy of the minimal base rootfs (nothing but dpkg, apt and a
shell), installs the package there with `apt-get install ./reconciler_*.deb`, so its Depends
must bring everything it needs, runs `reconciler --help` and a real cycle against the test
engine (socket bind-mounted into the chroot), then purges it and checks that nothing is left.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.device_lab import DeviceLab, managed
from tests.packaging.chroots import Bind, Chroot
from tests.packaging.conftest import publish_one_app

SITE_PACKAGES = "/opt/reconciler/lib/python3.11/site-packages"
# Changed by every package install and not ours to judge: apt's and dpkg's own records, logs,
# caches, and the lab's files.
VOLATILE = ("/var/lib/apt", "/var/lib/dpkg", "/var/cache", "/var/log", "/tmp", "/run", "/proc")


def dpkg_deb(*args: str) -> str:
    result = subprocess.run(
        ["dpkg-deb", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout


def control_fields(deb: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in dpkg_deb("--field", str(deb)).splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def listing(deb: Path) -> dict[str, str]:
    """Path -> the `ls -l` style line for every entry of the package."""
    entries = {}
    for line in dpkg_deb("--contents", str(deb)).splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        entries[name.removeprefix(".").rstrip("/") or "/"] = line
    return entries


def test_the_package_depends_on_the_interpreter_its_virtualenv_was_made_with(deb: Path):
    fields = control_fields(deb)
    assert fields["Package"] == "reconciler"
    assert fields["Version"] == "0.1.0-1"
    assert deb.name == f"reconciler_0.1.0-1_{fields['Architecture']}.deb"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert depends[:4] == ["python3.11", "git", "ca-certificates", "procps"]  # procps: kill
    assert "docker.io | podman" in fields["Recommends"]


def test_the_package_holds_the_virtualenv_the_entry_point_the_unit_and_the_conffile(deb: Path):
    entries = listing(deb)
    assert "/usr/bin/reconciler -> /opt/reconciler/bin/reconciler" in entries["/usr/bin/reconciler"]
    assert "-> /usr/bin/python3.11" in entries["/opt/reconciler/bin/python3.11"]
    assert f"{SITE_PACKAGES}/reconciler/cli.py" in entries
    assert f"{SITE_PACKAGES}/reconciler/__pycache__/cli.cpython-311.pyc" in entries
    assert "/lib/systemd/system/reconciler.service" in entries
    assert "/etc/reconciler/labels.d" in entries
    # A device installs nothing with pip: the build tools stay out.
    assert not [name for name in entries if "/site-packages/pip/" in name]
    with_root_owner = [line for line in entries.values() if " root/root " not in line]
    assert with_root_owner == []
    assert dpkg_deb("--info", str(deb), "conffiles").split() == ["/etc/reconciler/config.yaml"]


def test_the_virtualenv_names_its_final_path_and_never_the_build_chroot(deb: Path, tmp_path: Path):
    dpkg_deb("--extract", str(deb), str(tmp_path))
    script = (tmp_path / "opt/reconciler/bin/reconciler").read_text()
    assert script.startswith("#!/opt/reconciler/bin/python3.11\n")
    config = (tmp_path / "opt/reconciler/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
    leaks = subprocess.run(
        ["grep", "-rIl", "reconciler-deb.", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert leaks.stdout == ""


@pytest.fixture
def bare_debian(base_tarball: Path, tmp_path: Path) -> Iterator[Chroot]:
    chroot = Chroot.extract(base_tarball, tmp_path / "root")
    yield chroot
    chroot.remove()


@pytest.mark.docker
def test_apt_installs_it_on_a_bare_debian_where_it_runs_a_cycle_and_purges_without_a_trace(
    bare_debian: Chroot,
    deb: Path,
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    app_image: str,
    docker_client: docker.DockerClient,
):
    chroot = bare_debian
    (chroot.root / "tmp" / deb.name).write_bytes(deb.read_bytes())
    install = chroot.apt_get("install", "--no-install-recommends", f"/tmp/{deb.name}")
    assert install.returncode == 0, install.stdout + install.stderr
    assert "fill in source.url and trust" in install.stdout
    installed = chroot.files(skip=VOLATILE)

    # Enabled for boot by the maintainer script; not started (no systemd runs in a chroot).
    wants = chroot.root / "etc/systemd/system/multi-user.target.wants/reconciler.service"
    assert wants.is_symlink()
    assert str(wants.readlink()) == "/lib/systemd/system/reconciler.service"

    help_run = chroot.run("reconciler", "--help")
    assert help_run.returncode == 0, help_run.stderr
    assert "once" in help_run.stdout
    assert "release" in help_run.stdout

    shipped = chroot.run("reconciler", "once")
    assert shipped.returncode == 2  # the default config: fill in source.url and trust
    assert "/etc/reconciler/config.yaml: source.url: missing required key" in shipped.stderr

    # A lab with paths that are the same inside and outside, so its config works as it is.
    lab = DeviceLab(tmp_path / "lab", docker_host=docker_host, namespace=namespace)
    publish_one_app(lab, app_image)
    binds = [Bind(lab.root)]
    if docker_host.startswith("unix://"):
        binds.append(Bind(Path(docker_host.removeprefix("unix://"))))
    cycle = chroot.run("reconciler", "once", "--config", str(lab.config_path), binds=binds)
    assert cycle.returncode == 0, cycle.stderr
    assert cycle.stdout.startswith("converged")
    (container,) = managed(docker_client, namespace)
    assert container.status == "running"
    status = chroot.run(
        "reconciler", "status", "--json", "--config", str(lab.config_path), binds=binds
    )
    assert status.returncode == 0, status.stderr
    assert [app["name"] for app in json.loads(status.stdout)["apps"]] == ["web"]

    purge = chroot.apt_get("purge", "reconciler")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert "not empty so not removed" not in purge.stdout + purge.stderr
    after = chroot.files(skip=(*VOLATILE, str(lab.root)))
    # Nothing made at run time stays (byte code, state), and nothing of the package does.
    # dpkg also takes /opt, empty now: no package of the base owns it.
    assert after - installed == set()
    assert [path for path in after if "reconciler" in path] == []
    dpkg_state = chroot.run("dpkg-query", "--showformat=${db:Status-Status}", "-W", "reconciler")
    assert dpkg_state.stdout in ("", "not-installed")
