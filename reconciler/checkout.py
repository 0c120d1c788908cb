"""Reading a fleet repo checkout on disk, for the verbs that run in CI or on a laptop.

Shell: file-system and `git` reads only. The device never uses this (it reads Git objects via
`adapters.git_source`); `validate`, `plan` and `release` do. Symlinks are reported, never followed,
because a device would refuse them too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler import manifests, safe_yaml
from reconciler.errors import Problem


def manifest_files(root: Path) -> tuple[dict[str, bytes], list[Problem]]:
    """Every `apps/**/*.yaml` file under `root`, keyed by its repo-relative path.

    Files over the manifest size limit are read only up to one byte past it, so the parser
    rejects them without holding them whole.
    """
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    apps_dir = root / "apps"
    if not apps_dir.is_dir():
        return files, problems
    for path in sorted(apps_dir.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not manifests.is_manifest_path(rel):
            continue
        if path.is_symlink():
            problems.append(Problem(rel, "", "is a symlink; manifests must be regular files"))
            continue
        if not path.is_file():
            continue
        data = read_capped(path, safe_yaml.MAX_BYTES + 1)
        files[rel] = data
    return files, problems


def read_capped(path: Path, limit: int) -> bytes:
    """Read at most `limit` bytes of a file."""
    with path.open("rb") as handle:
        return handle.read(limit)


def read_optional(root: Path, rel: str, *, limit: int = safe_yaml.MAX_BYTES + 1) -> bytes | None:
    """A file of the checkout, or None when it does not exist."""
    path = root / rel
    if not path.is_file() or path.is_symlink():
        return None
    return read_capped(path, limit)


def head_commit(root: Path) -> str:
    """The commit the checkout is at, or "" when it is not a Git work tree."""
    result = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def file_at_commit(root: Path, commit: str, rel: str) -> bytes | None:
    """A file's bytes at `commit` in the checkout's repository, or None if unavailable."""
    if not commit:
        return None
    result = _git(root, "cat-file", "blob", f"{commit}:{rel}")
    return result.stdout if result.returncode == 0 else None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, b"", str(exc).encode())
