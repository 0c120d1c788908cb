"""packaging/image/build-rootfs.sh: a device root file system, checked on disk, then booted.

The recipe bakes the package, a config pinning a lab CA's signer, that CA's trusted_root.json
and a labels file into a directory. The checks look at its files, ask systemd inside a chroot
what is enabled and whether the unit verifies, and run `reconciler --help` there. Then the tree
boots as a container with systemd as PID 1 (no kernel needed; the engine socket bind-mounted)
and reconciler.service must reach "active": under its full sandbox it ran a verified cycle
(the baked trust root, the baked labels) and sent READY=1, and the app runs on the engine.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml
from docker.models.containers import Container

from reconciler.fleet import lab_ca
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, managed, remove_namespace
from tests.packaging import chroots
from tests.packaging.chroots import Chroot

RECIPE = chroots.PACKAGING / "image" / "build-rootfs.sh"
HOSTNAME = "gw-lab-01"
# Where the booted device sees the lab's fleet repo: not under /tmp, which PrivateTmp hides.
FLEET_INSIDE = "/srv/fleet"
BOOT_WAIT = 120.0
ENGINE_INSIDE = "unix:///run/docker.sock"  # the default socket, where the boot test binds it


@dataclass(frozen=True)
class BakedDevice:
    rootfs: Chroot
    inputs: Path  # the config, trust root and labels file given to the recipe
    lab: DeviceLab  # its fleet repo, signed by the CA whose root is baked in
    namespace: str


def bake(deb: Path, base: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(RECIPE),
            "--out",
            str(out),
            "--deb",
            str(deb),
            "--base",
            str(base),
            "--apt-cache",
            str(chroots.apt_cache()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def device_config(lab: DeviceLab, namespace: str) -> str:
    assert lab.signer is not None
    config: dict[str, object] = {
        "device": {"labels": {"role": "gateway"}, "labels_dir": "/etc/reconciler/labels.d"},
        "source": {"url": FLEET_INSIDE, "poll_interval": "1h"},
        "trust": {
            "identities": [{"identity": lab.signer.identity, "issuer": lab.signer.issuer}],
            "trusted_root": "/etc/reconciler/trusted_root.json",
        },
        "runtime": {"namespace": namespace},  # the engine: its default socket
        "health": {"timeout": "30s", "stable_for": "1s"},
    }
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def baked(
    deb: Path,
    base_tarball: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BakedDevice]:
    top = tmp_path_factory.mktemp("device")
    ca = top / "ca"
    lab_ca.init(ca)
    namespace = f"t-{secrets.token_hex(4)}"
    # Only its fleet repo is used: the device's config is device_config's.
    lab = DeviceLab(
        top / "lab", docker_host=ENGINE_INSIDE, namespace=namespace, signer=LabSigner(ca)
    )
    inputs = top / "inputs"
    inputs.mkdir()
    (inputs / "config.yaml").write_text(device_config(lab, namespace))
    (inputs / "site.yaml").write_text("site: lab\nring: canary\n")
    result = bake(
        deb,
        base_tarball,
        top / "rootfs",
        "--config",
        str(inputs / "config.yaml"),
        "--trusted-root",
        str(ca / lab_ca.TRUSTED_ROOT),
        "--labels",
        str(inputs / "site.yaml"),
        "--hostname",
        HOSTNAME,
    )
    assert result.returncode == 0, result.stderr
    assert "labels: ring=canary,role=gateway,site=lab" in result.stderr
    rootfs = Chroot(top / "rootfs")
    yield BakedDevice(rootfs=rootfs, inputs=inputs, lab=lab, namespace=namespace)
    rootfs.remove()


def test_the_image_holds_the_package_and_the_baked_config_trust_root_and_labels(
    baked: BakedDevice,
):
    etc = baked.rootfs.root / "etc"
    assert (etc / "reconciler/config.yaml").read_bytes() == (
        baked.inputs / "config.yaml"
    ).read_bytes()
    assert (etc / "reconciler/trusted_root.json").read_bytes() == (
        baked.lab.signer.ca / lab_ca.TRUSTED_ROOT  # type: ignore[union-attr]
    ).read_bytes()
    assert sorted(p.name for p in (etc / "reconciler/labels.d").iterdir()) == ["10-site.yaml"]
    status = baked.rootfs.run("dpkg-query", "-W", "-f=${db:Status-Status}", "reconciler")
    assert status.stdout == "installed"
    assert (baked.rootfs.root / "usr/bin/reconciler").is_symlink()


def test_the_image_is_ready_to_boot_and_unique_per_device(baked: BakedDevice):
    root = baked.rootfs.root
    assert list((root / "boot").glob("vmlinuz-*")), "no kernel"
    assert list((root / "boot").glob("initrd.img-*")), "no initramfs"
    assert (root / "sbin/init").resolve().name == "systemd"
    assert (root / "etc/fstab").read_text().split()[:3] == ["LABEL=rootfs", "/", "ext4"]
    assert (root / "etc/hostname").read_text() == f"{HOSTNAME}\n"
    assert (root / "etc/machine-id").read_text() == ""  # made on each device's first boot
    assert str((root / "etc/resolv.conf").readlink()) == "../run/systemd/resolve/stub-resolv.conf"
    # Nothing of the build stays: its DNS, its service block, package lists, mounts.
    leftovers = [".resolv.conf.systemd-resolved.bak", "../usr/sbin/policy-rc.d"]
    assert [name for name in leftovers if (root / "etc" / name).exists()] == []
    assert list((root / "var/lib/apt/lists").glob("*_Packages")) == []
    assert chroots.mounts_under(root) == []


def test_the_reconciler_engine_and_network_start_at_boot(baked: BakedDevice):
    units = [
        "reconciler.service",
        "docker.service",
        "systemd-networkd.service",
        "systemd-resolved.service",
        "systemd-timesyncd.service",
    ]
    enabled = baked.rootfs.run("systemctl", "is-enabled", *units)
    assert enabled.stdout.split() == ["enabled"] * len(units), enabled.stderr


def test_systemd_analyze_verify_accepts_the_unit_as_installed(baked: BakedDevice):
    result = baked.rootfs.run("systemd-analyze", "verify", "reconciler.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_reconciler_help_runs_inside_the_image(baked: BakedDevice):
    result = baked.rootfs.run("reconciler", "--help")
    assert result.returncode == 0, result.stderr
    assert "reconciler run" not in result.stderr
    assert "once" in result.stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("source: {url: 'ext::sh'}\n", "source.url"),
        ("source: {url: /srv/fleet}\ntrust: {allow_unsigned: true}\n", "allow_unsigned"),
    ],
    ids=["an invalid config", "a lab config without --lab"],
)
def test_the_recipe_refuses_to_bake(
    config: str, message: str, deb: Path, base_tarball: Path, tmp_path: Path
):
    (tmp_path / "config.yaml").write_text(config)
    out = tmp_path / "rootfs"
    result = bake(deb, base_tarball, out, "--config", str(tmp_path / "config.yaml"))
    assert result.returncode != 0
    assert message in result.stderr
    assert not out.exists()  # no half-baked image left behind


# --- a Podman device ----------------------------------------------------------------------------

PODMAN_SOCKET = "unix:///run/podman/podman.sock"


@pytest.fixture(scope="module")
def baked_for_podman(
    deb: Path, base_tarball: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    top = tmp_path_factory.mktemp("podman-device")
    config = top / "config.yaml"
    config.write_text(
        "source: {url: /srv/fleet}\ntrust: {allow_unsigned: true}\n"
        f"runtime: {{docker_host: '{PODMAN_SOCKET}'}}\n"
    )
    result = bake(
        deb,
        base_tarball,
        top / "rootfs",
        "--config",
        str(config),
        "--engine",
        "podman",
        "--no-kernel",
        "--lab",
    )
    assert result.returncode == 0, result.stderr
    rootfs = Chroot(top / "rootfs")
    yield rootfs
    rootfs.remove()


def test_a_podman_device_gets_podman_its_api_socket_and_restart_service(
    baked_for_podman: Chroot,
):
    units = ["reconciler.service", "podman.socket", "podman-restart.service"]
    enabled = baked_for_podman.run("systemctl", "is-enabled", *units)
    assert enabled.stdout.split() == ["enabled"] * len(units), enabled.stderr
    installed = baked_for_podman.run(
        "dpkg-query",
        "-W",
        "-f=${Package} ${db:Status-Status}\n",
        "podman",
        "netavark",
        "aardvark-dns",
    )
    assert sorted(installed.stdout.splitlines()) == [
        "aardvark-dns installed",
        "netavark installed",
        "podman installed",
    ]
    assert not (baked_for_podman.root / "lib/systemd/system/docker.service").exists()
    verify = baked_for_podman.run("systemd-analyze", "verify", "reconciler.service")
    assert verify.returncode == 0, verify.stderr


def test_the_recipe_refuses_a_podman_device_whose_config_names_another_engine(
    deb: Path, base_tarball: Path, tmp_path: Path
):
    (tmp_path / "config.yaml").write_text(
        "source: {url: /srv/fleet}\ntrust: {allow_unsigned: true}\n"
    )
    out = tmp_path / "rootfs"
    result = bake(
        deb,
        base_tarball,
        out,
        "--config",
        str(tmp_path / "config.yaml"),
        "--engine",
        "podman",
        "--lab",
    )
    assert result.returncode != 0
    assert f"a Podman device needs {PODMAN_SOCKET}" in result.stderr
    assert not out.exists()


# --- booting it --------------------------------------------------------------------------------


def systemd_container_options() -> dict[str, object]:
    """What systemd needs to run as PID 1 in a container on this host's cgroup layout."""
    options: dict[str, object] = {
        # Mounts and namespaces for the unit's sandbox; its seccomp filter.
        "cap_add": ["SYS_ADMIN"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "tmpfs": {"/run": "", "/run/lock": "", "/tmp": ""},
    }
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroup v2 only
        options["cgroupns"] = "private"
        options["volumes"] = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}}
    else:  # v1 or hybrid: systemd makes its own subtree below the read-only mount
        options["volumes"] = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}}
    return options


@pytest.fixture(scope="module")
def boot_image(baked: BakedDevice, docker_client: docker.DockerClient) -> Iterator[str]:
    """The rootfs as an image (without kernel and modules, which a container does not use)."""
    tag = f"reconciler-test/device:{uuid.uuid4().hex[:12]}"
    tar = subprocess.Popen(
        [
            "tar",
            "--numeric-owner",
            "-C",
            str(baked.rootfs.root),
            "--exclude=./boot",
            "--exclude=./usr/lib/modules",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    repository, _, version = tag.partition(":")
    with tar.stdout:
        docker_client.api.import_image_from_stream(tar.stdout, repository=repository, tag=version)
    assert tar.wait() == 0
    yield tag
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(tag, force=True)


def systemctl(device: Container, *args: str) -> str:
    return device.exec_run(["systemctl", *args]).output.decode().strip()


def unit_property(device: Container, name: str) -> str:
    return systemctl(device, "show", "reconciler.service", "--value", "-p", name)


def journal(device: Container) -> str:
    lines = device.exec_run(["journalctl", "--no-pager", "-o", "cat", "-u", "reconciler.service"])
    return lines.output.decode(errors="replace")[-3000:]


def wait_until_active(device: Container, *, timeout: float = BOOT_WAIT) -> str:
    """reconciler.service's state once it is active or failed (or the wait ran out)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        device.reload()
        if device.status != "running":
            return f"container {device.status}"
        state = systemctl(device, "is-active", "reconciler.service")
        if state in ("active", "failed"):
            return state
        time.sleep(0.5)
    return state


@dataclass(frozen=True)
class Booted:
    device: Container
    at_boot: dict[str, str]  # reconciler.service's properties once it was first active


BOOT_PROPERTIES = ("NRestarts", "WatchdogUSec", "ProtectSystem", "MemoryDenyWriteExecute")


@pytest.fixture(scope="module")
def booted(
    baked: BakedDevice,
    boot_image: str,
    docker_host: str,
    app_image: str,
    docker_client: docker.DockerClient,
) -> Iterator[Booted]:
    """The image running with systemd as PID 1, its first reconciler cycle over."""
    if not docker_host.startswith("unix://"):
        pytest.skip("booting needs the engine's unix socket to bind into the device")
    baked.lab.publish(
        {
            "web": app_manifest(
                "web",
                [{"name": "web", "image": app_image}],
                selector={"matchLabels": {"role": "gateway", "site": "lab"}},  # baked labels
            )
        }
    )
    options = systemd_container_options()
    volumes = dict(options.pop("volumes"))  # type: ignore[call-overload]
    volumes[str(baked.lab.fleet.root)] = {"bind": FLEET_INSIDE, "mode": "ro"}
    volumes[docker_host.removeprefix("unix://")] = {
        "bind": ENGINE_INSIDE.removeprefix("unix://"),
        "mode": "rw",
    }
    # systemd reads a container's "kernel command line" from PID 1's arguments: no engine of
    # its own (the host's is bind-mounted) and no wait for a network it does not manage.
    masks = [
        "docker.service",
        "docker.socket",
        "containerd.service",
        "systemd-networkd-wait-online.service",
    ]
    device = docker_client.containers.run(
        boot_image,
        ["/sbin/init", *(f"systemd.mask={unit}" for unit in masks)],
        detach=True,
        hostname=HOSTNAME,
        network_mode="none",
        volumes=volumes,
        stop_signal="SIGRTMIN+3",
        **options,
    )
    try:
        state = wait_until_active(device)
        assert state == "active", f"reconciler.service is {state!r}:\n{journal(device)}"
        yield Booted(device, {name: unit_property(device, name) for name in BOOT_PROPERTIES})
    finally:
        device.remove(force=True)
        remove_namespace(docker_client, baked.namespace)


@pytest.mark.docker
def test_booted_it_runs_a_verified_cycle_in_the_sandbox_and_tells_systemd_it_is_ready(
    booted: Booted, baked: BakedDevice, docker_client: docker.DockerClient
):
    # "active" for a Type=notify unit: READY=1 came, after the first cycle.
    apps = managed(docker_client, baked.namespace)
    assert [app.status for app in apps] == ["running"], journal(booted.device)
    assert booted.at_boot == {
        "NRestarts": "0",
        "WatchdogUSec": "15min",
        "ProtectSystem": "strict",
        "MemoryDenyWriteExecute": "yes",
    }
    # Applied under the baked trust settings (no allow_unsigned): the release verified against
    # the baked trusted_root.json.
    status = booted.device.exec_run(["reconciler", "status", "--json"])
    assert status.exit_code == 0, status.output.decode()
    report = json.loads(status.output.decode())
    assert [app["name"] for app in report["apps"]] == ["web"]
    assert report["last_error"] is None


@pytest.mark.docker
def test_booted_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(booted: Booted):
    """With a 2 s watchdog (a runtime drop-in) the daemon's pings keep it alive; once it hangs
    (SIGSTOP) systemd aborts it and starts a new one."""
    device = booted.device
    dropin = "/run/systemd/system/reconciler.service.d"
    settings = "[Service]\\nWatchdogSec=2s\\nTimeoutAbortSec=1s\\nRestartSec=1s\\n"
    device.exec_run(["sh", "-c", f"mkdir -p {dropin} && printf '{settings}' > {dropin}/t.conf"])
    systemctl(device, "daemon-reload")
    systemctl(device, "restart", "reconciler.service")
    assert wait_until_active(device) == "active", journal(device)
    assert unit_property(device, "WatchdogUSec") == "2s"
    restarts = int(unit_property(device, "NRestarts"))
    time.sleep(5)  # 2.5 watchdog periods: only the pings keep it running
    assert systemctl(device, "is-active", "reconciler.service") == "active", journal(device)
    assert int(unit_property(device, "NRestarts")) == restarts, journal(device)

    hung = unit_property(device, "MainPID")
    device.exec_run(["kill", "-STOP", hung])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and int(unit_property(device, "NRestarts")) == restarts:
        time.sleep(0.5)
    assert int(unit_property(device, "NRestarts")) == restarts + 1, journal(device)
    # journald may write the line a moment after systemd acted on it (an empty read was seen).
    deadline = time.monotonic() + 30
    while "Watchdog timeout" not in journal(device) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "Watchdog timeout" in journal(device)
    assert wait_until_active(device) == "active", journal(device)
    assert unit_property(device, "MainPID") != hung


@pytest.mark.docker
def test_booted_an_unconfigured_device_fails_once_and_says_what_to_fill_in(booted: Booted):
    """The shipped template is invalid on purpose (exit 2): no restart every RestartSec, but a
    failed unit with the config's problems and what to do in the journal. Last in this module:
    it leaves the daemon stopped."""
    device = booted.device
    dropin = "/run/systemd/system/reconciler.service.d"
    settings = "[Service]\\nRestartSec=1s\\n"  # a loop would show within seconds
    device.exec_run(["sh", "-c", f"mkdir -p {dropin} && printf '{settings}' > {dropin}/u.conf"])
    setup = device.exec_run(
        ["cp", "/usr/share/reconciler/config.yaml", "/etc/reconciler/config.yaml"]
    )
    assert setup.exit_code == 0, setup.output.decode()
    systemctl(device, "daemon-reload")
    systemctl(device, "reset-failed", "reconciler.service")
    systemctl(device, "restart", "reconciler.service")
    assert wait_until_active(device) == "failed", journal(device)
    restarts = unit_property(device, "NRestarts")
    time.sleep(3)  # three RestartSec periods
    assert systemctl(device, "is-active", "reconciler.service") == "failed", journal(device)
    assert unit_property(device, "NRestarts") == restarts
    assert unit_property(device, "ExecMainStatus") == "2"
    said = journal(device)
    assert "/etc/reconciler/config.yaml: source.url: missing required key" in said
    assert "not restarting: fix the config problems above in /etc/reconciler/config.yaml" in said
