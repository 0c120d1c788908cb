"""The Debian package from packaging/build-deb.sh: what it holds, and its life on a bare Debian.

The install test takes a fresh copy of the minimal base rootfs (nothing but dpkg, apt and a
shell), installs the package there with `apt-get install ./reconciler_*.deb`, so its Depends
must bring everything it needs, runs `reconciler --help` and a real cycle against the test
engine (socket bind-mounted into the chroot), then purges it and checks that nothing is left.
The other chroot holds Docker CE (stand-ins with Docker's real Conflicts, Replaces and
Provides): installing beside it removes nothing, and an upgrade whose template config changed
asks nothing and keeps the device's config.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest

from testkit.device_lab import DeviceLab, managed
from tests.packaging import chroots
from tests.packaging.chroots import Bind, Chroot
from tests.packaging.conftest import publish_one_app, unavailable
from tests.packaging.test_systemd_unit import UNIT, unit_entries

PREFIX = "/usr/lib/reconciler"
SITE_PACKAGES = f"{PREFIX}/lib/python3.11/site-packages"
# Changed by every package install and not ours to judge: apt's and dpkg's own records, logs,
# caches, and the lab's files.
VOLATILE = ("/var/lib/apt", "/var/lib/dpkg", "/var/cache", "/var/log", "/tmp", "/run", "/proc")
# Snapshot: upstream+git<commit date>.<12 hex of the commit>[.dirty]-revision+deb<release>.
SNAPSHOT = re.compile(r"0\.1\.0\+git(\d{8})\.([0-9a-f]{12})(\.dirty)?-1\+deb12")


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


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, extracted once for the tests that read them."""
    tree = tmp_path_factory.mktemp("unpacked")
    dpkg_deb("--extract", str(deb), str(tree))
    return tree


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(chroots.REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_snapshot_is_versioned_by_its_commit_and_its_debian_release(deb: Path):
    fields = control_fields(deb)
    assert fields["Package"] == "reconciler"
    match = SNAPSHOT.fullmatch(fields["Version"])
    assert match, fields["Version"]
    assert match[2] == git("rev-parse", "--short=12", "HEAD")
    committed = datetime.fromtimestamp(int(git("log", "-1", "--format=%ct", "HEAD")), UTC)
    assert match[1] == committed.strftime("%Y%m%d")
    assert deb.name == f"reconciler_{fields['Version']}_{fields['Architecture']}.deb"


def test_it_depends_on_its_interpreter_and_recommends_any_engine_docker_ce_included(deb: Path):
    fields = control_fields(deb)
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert depends[0] == "python3.11"
    assert re.fullmatch(r"libc6 \(>= 2\.\d+\)", depends[1])  # the extension modules' glibc
    for needed in ("git", "ca-certificates", "procps"):  # procps: kill, for ExecReload
        assert needed in depends
    # docker-ce conflicts with docker.io: without it here, apt removes Docker CE for docker.io.
    assert "docker.io | docker-ce | podman" in fields["Recommends"]
    assert fields["Maintainer"] != "" and "example.invalid" not in fields["Maintainer"]


def test_the_package_holds_the_virtualenv_under_usr_lib_the_unit_the_template_and_a_man_page(
    deb: Path,
):
    entries = listing(deb)
    assert "-> ../lib/reconciler/bin/reconciler" in entries["/usr/bin/reconciler"]
    assert "-> ../../../bin/python3.11" in entries[f"{PREFIX}/bin/python3.11"]
    assert f"{SITE_PACKAGES}/reconciler/cli/__init__.py" in entries
    assert f"{SITE_PACKAGES}/reconciler/cli/__pycache__/__init__.cpython-311.pyc" in entries
    assert "/lib/systemd/system/reconciler.service" in entries
    assert "/usr/share/reconciler/config.yaml" in entries
    assert "/usr/share/man/man1/reconciler.1.gz" in entries
    assert "/etc/reconciler/labels.d" in entries
    # Nothing in /opt (dpkg would remove an /opt it found empty), no conffile to prompt about.
    assert [name for name in entries if name.startswith("/opt")] == []
    assert "/etc/reconciler/config.yaml" not in entries
    members = dpkg_deb("--info", str(deb))
    assert " conffiles" not in members
    with_root_owner = [line for line in entries.values() if " root/root " not in line]
    assert with_root_owner == []


def test_the_virtualenv_is_pruned_to_what_runs(deb: Path):
    entries = listing(deb)
    assert sorted(n.rsplit("/", 1)[1] for n in entries if n.startswith(f"{PREFIX}/bin/")) == [
        "python",
        "python3",
        "python3.11",
        "reconciler",
    ]  # no activate scripts, no dependencies' console scripts
    # A device installs nothing with pip; upstream test suites do not run there.
    assert not [name for name in entries if "/site-packages/pip/" in name]
    assert not [name for name in entries if name.endswith("/tests") or "/tests/" in name]
    assert not [name for name in entries if name.endswith(".gitignore")]


def test_every_shared_object_is_stripped_and_loads(unpacked: Path):
    objects = sorted((unpacked / SITE_PACKAGES.lstrip("/")).rglob("*.so*"))
    assert len(objects) >= 5
    for shared in objects:
        sections = subprocess.run(
            ["readelf", "-S", "-W", str(shared)], capture_output=True, text=True, check=True
        ).stdout
        assert ".symtab" not in sections, f"{shared.name} is not stripped"
        assert ".debug_info" not in sections, shared.name
        assert " .comment " not in sections, shared.name


def test_the_bytecode_names_no_source_time_so_nothing_is_compiled_at_run_time(unpacked: Path):
    """PEP 552 flags word 0b01: hash-based, unchecked (1 would be checked, 0 timestamp)."""
    pycs = list((unpacked / SITE_PACKAGES.lstrip("/")).rglob("*.pyc"))
    assert len(pycs) > 1000
    flags = {int.from_bytes(pyc.read_bytes()[4:8], "little") for pyc in pycs}
    assert flags == {0b01}
    sources = list((unpacked / SITE_PACKAGES.lstrip("/")).rglob("*.py"))
    assert len(pycs) == len(sources)


def test_the_virtualenv_names_its_final_path_and_never_the_build_chroot(unpacked: Path):
    script = (unpacked / PREFIX.lstrip("/") / "bin/reconciler").read_text()
    assert script.startswith(f"#!{PREFIX}/bin/python3.11\n")
    config = (unpacked / PREFIX.lstrip("/") / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
    assert (unpacked / PREFIX.lstrip("/") / "debian-release").read_text() == "12\n"
    leaks = subprocess.run(
        ["grep", "-rIl", "reconciler-deb.", str(unpacked)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert leaks.stdout == ""


def test_the_man_page_is_the_help_of_every_verb(unpacked: Path):
    page = subprocess.run(
        ["man", "--warnings", "-l", str(unpacked / "usr/share/man/man1/reconciler.1.gz")],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "100", "PATH": chroots.CHROOT_PATH, "LANG": "C.UTF-8"},
        timeout=60,
        check=False,
    )
    if page.returncode != 0 and shutil.which("man") is None:
        unavailable("man is not installed")
    assert page.returncode == 0, page.stderr
    assert page.stderr == ""  # groff's warnings: none
    for verb in ("run", "once", "status", "sync", "rollback", "validate", "release", "verify"):
        assert f"reconciler {verb} [-h]" in page.stdout, verb
    assert "/etc/reconciler/config.yaml" in page.stdout


# --- debian/copyright -------------------------------------------------------------------------


def copyright_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def test_the_copyright_file_names_every_bundled_distribution_and_its_licence(unpacked: Path):
    text = (unpacked / "usr/share/doc/reconciler/copyright").read_text()
    paragraphs = copyright_paragraphs(text)
    header, own, *rest = paragraphs
    assert header["Format"].startswith("https://www.debian.org/doc/packaging-manuals/copyright")
    assert own["Files"] == "*"
    assert own["License"] == "Apache-2.0"
    files = [p for p in rest if "Files" in p]
    standalone = {p["License"].partition("\n")[0] for p in rest if "Files" not in p}
    covered: set[str] = set()
    for paragraph in files:
        licence = paragraph["License"]
        name, _, text_given = licence.partition("\n")
        assert re.fullmatch(r"[A-Za-z0-9.+-]+( (OR|AND) [A-Za-z0-9.+-]+)*", name), name
        # The text itself, or a pointer to Debian's copy (and its stand-alone paragraph).
        assert text_given.strip(), f"{paragraph['Comment']}: no licence text"
        for common in re.findall(r"common-licenses/([A-Za-z0-9-]+(?:\.\d+)*)", text_given):
            assert common in standalone
        assert paragraph["Copyright"]
        patterns = paragraph["Files"].split()
        covered |= {pattern.split("/")[-2] for pattern in patterns if "/" in pattern}
    dist_infos = {
        d.name for d in (unpacked / SITE_PACKAGES.lstrip("/")).glob("*.dist-info") if d.is_dir()
    }
    reconciler = {d for d in dist_infos if d.startswith("reconciler-")}
    assert dist_infos - reconciler <= covered, dist_infos - covered
    assert len(files) == len(dist_infos) - 1 >= 30
    # What Debian's security updates never reach, named with its version.
    assert re.search(r"OpenSSL \d+\.\d+\.\d+\w? \(Apache-2.0\) in cryptography/", text)
    assert re.search(r"OpenSSL \d+\.\d+\.\d+\w? \(Apache-2.0\) in rfc3161_client/", text)
    assert re.search(r"libyaml \d+\.\d+\.\d+ \(MIT\) in yaml/_yaml", text)
    licences = {p["License"].partition("\n")[0] for p in files}
    assert {"MIT", "MPL-2.0", "BSD-3-Clause"} <= licences
    assert len(licences) >= 6


# --- maintainer scripts -----------------------------------------------------------------------

AUTOSCRIPTS = Path("/usr/share/debhelper/autoscripts")
# What bookworm's `dh_installsystemd --no-start` writes for a unit with an [Install] section.
DH_SNIPPETS = {
    "postinst": ["postinst-systemd-enable", "postinst-systemd-restartnostart"],
    "prerm": ["prerm-systemd-restart"],  # stop on remove (dh writes it without --no-start)
    "postrm": ["postrm-systemd", "postrm-systemd-reload-only"],
}


@pytest.mark.parametrize("script", sorted(DH_SNIPPETS))
def test_the_maintainer_scripts_hold_what_bookworms_debhelper_writes(script: str):
    if not AUTOSCRIPTS.is_dir():
        unavailable("debhelper is not installed (scripts/install.sh installs it)")
    ours = (chroots.PACKAGING / "debian" / script).read_text()
    for name in DH_SNIPPETS[script]:
        snippet = (AUTOSCRIPTS / name).read_text()
        for marker, value in (
            ("#UNITFILE#", "'reconciler.service'"),
            ("#UNITFILES#", "'reconciler.service'"),
            ("#RESTART_ACTION#", "try-restart"),
        ):
            snippet = snippet.replace(marker, value)
        assert snippet in ours, f"{script} lacks debhelper's {name}"
    assert "deb-systemd-helper mask" not in ours  # blocks a local unit of the same name


# --- reproducible builds ----------------------------------------------------------------------


def member_digests(deb: Path, tmp: Path) -> dict[str, str]:
    tree = tmp / deb.stem
    dpkg_deb("--raw-extract", str(deb), str(tree))
    digests = subprocess.run(
        ["sh", "-c", "find . -type f -print0 | sort -z | xargs -0 md5sum"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(reversed(line.split("  ", 1)) for line in digests.splitlines())


def test_two_builds_of_one_commit_are_byte_identical(deb: Path, rebuilt_deb: Path, tmp_path: Path):
    assert rebuilt_deb.name == deb.name
    if rebuilt_deb.read_bytes() != deb.read_bytes():
        first = member_digests(deb, tmp_path / "1")
        second = member_digests(rebuilt_deb, tmp_path / "2")
        differ = sorted(n for n in first.keys() | second.keys() if first.get(n) != second.get(n))
        pytest.fail(f"{len(differ)} files differ, e.g. {differ[:10]}")


# --- lintian ----------------------------------------------------------------------------------

# Errors a bundled virtualenv brings and cannot shed, each explained in packaging/README.md.
INHERENT_ERRORS = {"package-installs-python-pycache-dir", "embedded-library"}


def test_lintian_reports_no_error_but_those_inherent_to_a_bundled_virtualenv(deb: Path):
    if shutil.which("lintian") is None:
        unavailable("lintian is not installed (scripts/install.sh installs it)")
    result = subprocess.run(
        ["lintian", "--no-cfg", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    errors = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("E: ")}
    assert errors <= INHERENT_ERRORS, result.stdout
    readme = (chroots.PACKAGING / "README.md").read_text()
    for tag in INHERENT_ERRORS:
        assert f"`{tag}`" in readme, f"{tag} is not explained in packaging/README.md"


# --- on a bare Debian -------------------------------------------------------------------------


@pytest.fixture
def bare_debian(base_tarball: Path, tmp_path: Path) -> Iterator[Chroot]:
    chroot = Chroot.extract(base_tarball, tmp_path / "root")
    yield chroot
    chroot.remove()


def exec_start_pre(chroot: Chroot) -> subprocess.CompletedProcess[str]:
    """The unit's release check, run as systemd would ($$ is a literal $)."""
    command = unit_entries(UNIT.read_text())["Service"]["ExecStartPre"][0]
    script = command.removeprefix("-/bin/sh -c ").strip("'").replace("$$", "$")
    return chroot.run("/bin/sh", "-c", script)


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
    # Some other vendor's software may have made /opt: it must outlive a purge of ours.
    (chroot.root / "opt").mkdir(exist_ok=True)
    (chroot.root / "tmp" / deb.name).write_bytes(deb.read_bytes())
    install = chroot.apt_get("install", "--no-install-recommends", f"/tmp/{deb.name}")
    assert install.returncode == 0, install.stdout + install.stderr
    assert "fill in source.url and trust" in install.stdout
    installed = chroot.files(skip=VOLATILE)

    # The device's config, made from the template; the credentials directory, root's only.
    config = chroot.root / "etc/reconciler/config.yaml"
    assert config.read_bytes() == (chroots.PACKAGING / "config.yaml").read_bytes()
    assert (chroot.root / "etc/reconciler/docker").stat().st_mode & 0o777 == 0o700

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

    # The unit's start warns only on a Debian release the package was not built for.
    assert exec_start_pre(chroot).stdout == ""
    os_release = chroot.root / "usr/lib/os-release"
    original = os_release.read_text()
    os_release.write_text(original.replace('VERSION_ID="12"', 'VERSION_ID="13"'))
    warning = exec_start_pre(chroot).stdout
    os_release.write_text(original)
    assert "built for Debian 12, this system runs Debian 13" in warning

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
    # Nothing made at run time stays (state, config), nothing of the package does, and
    # nothing that was there before goes: /opt stays.
    assert after - installed == set()
    assert [path for path in after if "reconciler" in path] == []
    assert (chroot.root / "opt").is_dir()
    dpkg_state = chroot.run("dpkg-query", "--showformat=${db:Status-Status}", "-W", "reconciler")
    assert dpkg_state.stdout in ("", "not-installed")


# --- beside Docker CE, and upgraded -----------------------------------------------------------

# Docker's own packages as download.docker.com ships them (docker-ce-packaging deb/common/control,
# containerd-packaging debian/control): their real Conflicts, Replaces, Breaks and Provides.
# Depends are cut to each other, so that the stand-ins install offline and hold no programs.
DOCKER_CE = {
    "containerd.io": {
        "Version": "1.7.27-1",
        "Provides": "containerd, runc",
        "Conflicts": "containerd, runc",
        "Replaces": "containerd, runc",
    },
    "docker-ce-cli": {
        "Version": "5:28.0.4-1~debian.12~bookworm",
        "Conflicts": "docker (<< 1.5~), docker-engine, docker.io",
        "Replaces": "docker-ce (<< 5:0)",
        "Breaks": "docker-ce (<< 5:0)",
    },
    "docker-ce": {
        "Version": "5:28.0.4-1~debian.12~bookworm",
        "Depends": "containerd.io (>= 1.7.27), docker-ce-cli",
        "Conflicts": "docker (<< 1.5~), docker-engine, docker.io",
        "Replaces": "docker-engine, docker-ce-cli (<< 5:28.0.0)",
    },
}


def stand_in(name: str, fields: dict[str, str], out: Path) -> Path:
    tree = out / name
    (tree / "DEBIAN").mkdir(parents=True)
    control = [f"Package: {name}", "Architecture: all", "Maintainer: Test <test@localhost>"]
    control += [f"{key}: {value}" for key, value in fields.items()]
    control += [f"Description: stand-in for Docker's {name} package"]
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    deb = out / f"{name}.deb"
    dpkg_deb("--root-owner-group", "-Znone", "--build", str(tree), str(deb))
    return deb


def repacked(deb: Path, out: Path, *, version: str, recommends: str | None = None) -> Path:
    """The package as another version: its template config gains a line; or other Recommends."""
    tree = out / f"tree-{version}"
    dpkg_deb("--raw-extract", str(deb), str(tree))
    control = tree / "DEBIAN/control"
    text = re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text())
    if recommends is not None:
        text = re.sub(r"(?m)^Recommends: .*$", f"Recommends: {recommends}", text)
    control.write_text(text)
    template = tree / "usr/share/reconciler/config.yaml"
    template.write_text(template.read_text() + "# A note added in a later version.\n")
    subprocess.run(
        ["sh", "-c", "find usr lib -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums"],
        cwd=tree,
        check=True,
    )
    new = out / f"reconciler_{version}.deb"
    dpkg_deb("--root-owner-group", "-Znone", "--build", str(tree), str(new))
    return new


@pytest.fixture
def docker_ce_device(base_tarball: Path, tmp_path: Path) -> Iterator[Chroot]:
    """A bare Debian with Docker CE's packages installed (as stand-ins)."""
    chroot = Chroot.extract(base_tarball, tmp_path / "root")
    debs = chroot.root / "tmp/docker-ce"
    debs.mkdir()
    for name, fields in DOCKER_CE.items():
        stand_in(name, fields, debs)
    installed = chroot.run("sh", "-c", "dpkg -i /tmp/docker-ce/*.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield chroot
    chroot.remove()


def installed_packages(chroot: Chroot) -> set[str]:
    listed = chroot.run("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\\n")
    return {line.split()[1] for line in listed.stdout.splitlines() if line.startswith("ii ")}


def test_beside_docker_ce_it_installs_removing_nothing_and_upgrades_keeping_the_config(
    docker_ce_device: Chroot, deb: Path, tmp_path: Path
):
    chroot = docker_ce_device
    work = chroot.root / "tmp"
    fields = control_fields(deb)

    # The stand-ins reproduce what the old Recommends did: apt removes Docker CE for docker.io.
    old = repacked(deb, work, version=fields["Version"], recommends="docker.io | podman, iproute2")
    plan = chroot.apt_get("install", "--simulate", f"/tmp/{old.name}")
    assert "Remv docker-ce " in plan.stdout, plan.stdout + plan.stderr

    shutil.copy(deb, work / deb.name)
    install = chroot.apt_get("install", f"/tmp/{deb.name}")  # with Recommends, as apt does
    assert install.returncode == 0, install.stdout + install.stderr
    assert "REMOVED" not in install.stdout
    packages = installed_packages(chroot)
    assert {"docker-ce", "docker-ce-cli", "containerd.io", "reconciler"} <= packages
    assert "docker.io" not in packages

    # The device's own config, as every install has it; then a version with a new template.
    config = chroot.root / "etc/reconciler/config.yaml"
    device_config = "source: {url: https://git.example.com/fleet.git}\n"
    config.write_text(device_config)
    newer = repacked(deb, work, version=fields["Version"].replace("-1+deb12", "-2+deb12"))
    upgrade = chroot.apt_get("install", f"/tmp/{newer.name}")  # no --force-conf*: would it ask?
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "Configuration file" not in upgrade.stdout + upgrade.stderr
    state = chroot.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", "reconciler")
    assert state.stdout == f"ii {newer.name.removeprefix('reconciler_').removesuffix('.deb')}"
    assert config.read_text() == device_config
    assert (
        (chroot.root / "usr/share/reconciler/config.yaml")
        .read_text()
        .endswith("# A note added in a later version.\n")
    )
