"""Fleet repos made with real `git` in tmp_path, and a way to run the real CLI on them.

Git runs with a fixed author, committer and dates and without the user's global config, so
commit ids are the same on every run and machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import cli

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Tester",
    "GIT_AUTHOR_EMAIL": "tester@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Fleet Tester",
    "GIT_COMMITTER_EMAIL": "tester@example.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
CONSOLE_SCRIPT = Path(sys.executable).parent / "reconciler"


def manifest(
    name: str,
    *,
    image: str = "127.0.0.1:5000/app:1.0",
    selector: str = "{}",
    waves: str = "",
    extra_container: str = "",
) -> str:
    """An App manifest; `selector` and `waves` are flow-style YAML, e.g. `{matchLabels: {a: b}}`."""
    lines = [
        "apiVersion: reconciler/v1",
        "kind: App",
        f"metadata: {{name: {name}}}",
        "spec:",
    ]
    if selector:  # "" leaves it out: a manifest every device must refuse (SPEC 2.1)
        lines.append(f"  selector: {selector}")
    lines += ["  containers:", f'    - {{name: main, image: "{image}"}}']
    if extra_container:
        lines.append(f"    - {extra_container}")
    if waves:
        lines.append(f"  rollout: {{waves: {waves}}}")
    return "\n".join(lines) + "\n"


class FleetRepo:
    """A fleet repo checkout in a fresh Git repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, **GIT_ENV}
        result = subprocess.run(
            ["git", *args], cwd=self.root, env=env, capture_output=True, check=True, timeout=60
        )
        return result.stdout.decode()

    def write(self, rel: str, content: str | bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def app(self, name: str, **kwargs: str) -> Path:
        return self.write(f"apps/{name}/app.yaml", manifest(name, **kwargs))

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "fleet")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run `reconciler.cli.main(args)` in-process; argparse's SystemExit becomes the code."""

    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


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
