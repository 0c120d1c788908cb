"""packaging/reconciler.service: what systemd makes of it, checked with systemd's own tools.

`systemd-analyze verify` and `security --offline` run against a small root directory holding the
unit, the host's targets and stand-ins for the two programs the unit executes: the checks run
anywhere systemd-analyze is installed, as any user, in milliseconds. The unit running for real
under systemd is tested on the booted device image (test_device_image.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.core import settings
from tests.packaging.chroots import PACKAGING
from tests.packaging.conftest import unavailable

UNIT = PACKAGING / "reconciler.service"
HOST_UNITS = Path("/lib/systemd/system")


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_SPAN_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def seconds(value: str) -> float:
    """A systemd time span such as `15min`, `10s` or `2min 30s`, in seconds."""
    parts = re.findall(r"(\d+)\s*([a-z]+)", value)
    assert parts, f"not a time span: {value!r}"
    return sum(int(number) * _SPAN_UNITS[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_entries(UNIT.read_text())["Service"]


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root holding the unit, the host's targets, and executables at the unit's paths."""
    if shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir():
        unavailable("systemd-analyze is not installed (apt-get install systemd)")
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    for target in HOST_UNITS.glob("*.target"):
        shutil.copy(target, units)
    shutil.copy(UNIT, units / "reconciler.service")
    for program in ("usr/bin/reconciler", "bin/kill", "bin/sh"):
        path = tmp_path / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return tmp_path


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}", "reconciler.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_unit_without_a_single_warning(unit_root: Path):
    result = analyze(unit_root, "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_systemd_analyze_verify_would_report_a_misspelt_setting(unit_root: Path):
    """The check above is not blind: verify exits 0 on a misspelt key but says so."""
    unit = unit_root / "lib/systemd/system/reconciler.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yess"))
    result = analyze(unit_root, "verify")
    assert "protect home" in result.stderr.lower()


def test_the_sandbox_scores_as_well_exposed_as_systemd_calls_ok(unit_root: Path):
    result = analyze(unit_root, "security", "--offline=yes", "--no-pager")
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"Overall exposure level for reconciler\.service: ([0-9.]+) (\w+)", result.stdout
    )
    assert match, result.stdout[-500:]
    assert float(match[1]) <= 3.0, result.stdout  # 2.6 when written; 10 = no sandbox at all


def test_the_daemon_tells_systemd_it_is_ready_and_alive(service: dict[str, list[str]]):
    assert service["Type"] == ["notify"]  # READY=1 after the first cycle
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == ["/usr/bin/reconciler run"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_watchdog_outlasts_a_cycle_that_waits_for_health_and_then_for_a_rollback(
    service: dict[str, list[str]],
):
    """The daemon pings between cycles only: a change and its rollback each wait up to
    health.timeout + stable_for (defaults), and pulls come on top."""
    health = settings.HealthSettings()
    longest_wait = 2 * (health.timeout + health.stable_for)
    watchdog = seconds(service["WatchdogSec"][0])
    assert watchdog >= longest_wait + 10 * 60  # ten minutes for pulls
    # The first cycle, before READY=1, may pull every image of the device.
    assert seconds(service["TimeoutStartSec"][0]) >= watchdog


def test_it_restarts_forever_with_a_pause(service: dict[str, list[str]]):
    unit = unit_entries(UNIT.read_text())["Unit"]
    assert service["Restart"] == ["always"]
    assert seconds(service["RestartSec"][0]) >= 5
    assert unit["StartLimitIntervalSec"] == ["0"]  # never "start request repeated too quickly"


def test_a_bad_config_stops_the_restarts_with_a_line_that_says_what_to_do(
    service: dict[str, list[str]],
):
    """Exit 2 (SPEC 3.3: bad config) would fail the same way on every restart."""
    assert service["RestartPreventExitStatus"] == ["2"]
    (stop_post,) = service["ExecStopPost"]
    script = stop_post.removeprefix("/bin/sh -c ").strip("'").replace("$$", "$")
    for status, expected in (("2", "fix the config problems above in"), ("1", "")):
        said = subprocess.run(
            ["sh", "-c", script],
            env={"EXIT_STATUS": status, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert expected in said.stdout
        assert bool(said.stdout) == bool(expected)


def test_only_the_state_directory_is_writable(service: dict[str, list[str]]):
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["reconciler"]
    assert settings.DEFAULT_STATE_DIR == "/var/lib/reconciler"  # what StateDirectory makes
    assert "ReadWritePaths" not in service
    hardening = ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateDevices")
    for setting in (*hardening, "MemoryDenyWriteExecute"):
        assert service[setting] == ["yes"], setting


def test_registry_credentials_are_read_from_etc_since_home_is_hidden(
    service: dict[str, list[str]],
):
    assert "DOCKER_CONFIG=/etc/reconciler/docker" in service["Environment"]
