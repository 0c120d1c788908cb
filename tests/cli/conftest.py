"""The `fleet` fixture: a fleet repo checkout in tmp_path for the CLI to read.

The repo itself, the console script runner and `Run` are in testkit (`fleet_repos`, `cli`);
the in-process `run_cli` fixture is in tests/conftest.py, for tests/unit too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.fleet_repos import FleetRepo


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "fleet")
