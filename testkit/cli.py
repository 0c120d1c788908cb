"""The real CLI run as a user or a CI job runs it: the installed console script, and what it said.

Owns `CONSOLE_SCRIPT` (the `reconciler` entry point beside this interpreter, installed by
`pip install -e .`), `Run` (exit code, stdout, stderr) and `run_console_script`. The in-process
runner is the `run_cli` fixture in tests/conftest.py (it needs pytest's capsys).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit.fleet_repos import GIT_ENV

CONSOLE_SCRIPT = Path(sys.executable).parent / "reconciler"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run_console_script(*args: str, cwd: Path) -> Run:
    """Run the installed `reconciler` console script, as a user or CI job does."""
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: pip install -e . into the venv"
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
    )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())
