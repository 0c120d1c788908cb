"""Reading a fleet repo checkout on disk, for the verbs that run in CI or on a laptop.

Shell: file-system and `git` reads only; it never writes and never changes Git state. The device
never uses this (it reads Git objects via `adapters.git_source`); `validate`, `plan` and
`release` do. Symlinks are reported, never followed, because a device would refuse them too.
Paths are repo-relative and `/`-separated, as the release pins them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler import manifests, safe_yaml
from reconciler.errors import Problem, ProblemsError

APPS_DIR = "apps"


def manifest_files(root: Path) -> tuple[dict[str, bytes], list[Problem]]:
    """Every `apps/**/*.yaml` file under `root`, keyed by its repo-relative path.

    Files over the manifest size limit are read only up to one byte past it, so the parser
    rejects them without holding them whole. Symlinks (files or directories) and unreadable
    files are problems: a device reading Git objects would not see what the work tree shows.
    """
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    apps_dir = root / APPS_DIR
    if apps_dir.is_symlink():
        problems.append(Problem(APPS_DIR, "", "is a symlink; apps/ must be a real directory"))
        return files, problems
    if not apps_dir.is_dir():
        return files, problems
    # rglob does not descend into symlinked directories; they are reported below instead.
    for path in sorted(apps_dir.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            if path.is_dir():
                problems.append(
                    Problem(rel, "", "is a symlink to a directory; devices do not follow it")
                )
            elif manifests.is_manifest_path(rel):
                problems.append(Problem(rel, "", "is a symlink; manifests must be regular files"))
            continue
        if not manifests.is_manifest_path(rel) or not path.is_file():
            continue
        try:
            files[rel] = read_capped(path, safe_yaml.MAX_BYTES + 1)
        except OSError as exc:
            problems.append(Problem(rel, "", f"cannot be read: {exc.strerror or exc}"))
    return files, problems


def read_capped(path: Path, limit: int) -> bytes:
    """Read at most `limit` bytes of a file."""
    with path.open("rb") as handle:
        return handle.read(limit)


def read_optional(root: Path, rel: str, *, limit: int = safe_yaml.MAX_BYTES + 1) -> bytes | None:
    """A regular file of the checkout, or None when nothing exists at `rel`.

    Raises ProblemsError when something is there but cannot be used (a symlink, a directory,
    unreadable): treating it as absent could, for a release file, restart versions at 1.
    """
    path = root / rel
    if not path.is_symlink() and not path.exists():
        return None
    if path.is_symlink() or not path.is_file():
        kind = "a symlink" if path.is_symlink() else "not a regular file"
        raise ProblemsError([Problem(rel, "", f"is {kind}; expected a regular file")])
    try:
        return read_capped(path, limit)
    except OSError as exc:
        raise ProblemsError([Problem(rel, "", f"cannot be read: {exc.strerror or exc}")]) from None


def head_commit(root: Path) -> str:
    """The commit the checkout is at, or "" when it is not a Git work tree (or has no commit)."""
    result = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def file_at_commit(root: Path, commit: str, rel: str) -> bytes | None:
    """A file's bytes at `commit` in the checkout's repository, or None if unavailable.

    `rel` is relative to `root` (`./` makes Git resolve it from there, not from the top level).
    """
    if not commit or commit.startswith("-"):
        return None
    result = _git(root, "cat-file", "blob", f"{commit}:./{rel}")
    return result.stdout if result.returncode == 0 else None


def uncommitted(root: Path, paths: list[str]) -> list[str]:
    """Those of `paths` whose work-tree bytes are not what HEAD holds (changed, staged, untracked
    or ignored), sorted. Empty when `root` is not a Git work tree: there is nothing to compare.
    """
    if not paths or not head_commit(root):
        return []
    # --relative and ls-files both name paths relative to `root`, like `paths`.
    changed = _git(root, "diff", "--name-only", "-z", "--relative", "HEAD", "--", APPS_DIR)
    others = _git(root, "ls-files", "-z", "--others", "--", APPS_DIR)
    if changed.returncode != 0 or others.returncode != 0:
        return []
    listed = {
        name.decode("utf-8", "surrogateescape")
        for name in (changed.stdout + others.stdout).split(b"\0")
        if name
    }
    return sorted(set(paths) & listed)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, b"", str(exc).encode())
