"""Fixtures shared by the integration test modules (the real parts are in tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from reconciler.fleet import lab_ca
from testkit.device_lab import LabSigner


@pytest.fixture(scope="module")
def lab_signer(tmp_path_factory: pytest.TempPathFactory) -> LabSigner:
    """A lab CA of the module's own, and the signer devices trust when their config says so."""
    directory = tmp_path_factory.mktemp("ca") / "lab"
    lab_ca.init(directory)
    return LabSigner(directory)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons a test started; any still running at teardown are killed and reaped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
