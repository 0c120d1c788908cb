"""The committed versions of one manifest: every revision (sha256 of its bytes) its path held in
the history of a checkout's HEAD, newest first.

Shell: one `git log` for the commits that touched the path and one `git cat-file --batch` for
their blobs; it never changes Git state. Used by `reconciler release` and `validate` to resolve
the revision prefix of an abort in `.fleet/rollout.yaml` (SPEC 2.3) to the full revision
devices know. It follows one path, not renames: a manifest moved to a new path starts a new
history, as its release pins do.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

_GIT_TIMEOUT = 120.0
# Far more versions than any manifest has; bounds the work for a path rewritten by a bot.
MAX_VERSIONS = 5000


def revisions(root: Path, path: str, *, limit: int) -> list[str]:
    """The distinct revisions `path` held in HEAD's history, newest first; empty outside Git or
    when the path was never committed. Blobs over `limit` bytes are skipped (devices refuse them,
    so no device runs them)."""
    if "\n" in path or path.startswith("-"):
        return []
    log = _git(
        root,
        "--literal-pathspecs",
        "log",
        f"--max-count={MAX_VERSIONS}",
        "--format=%H",
        "HEAD",
        "--",
        path,
    )
    if log.returncode != 0:
        return []
    commits = log.stdout.decode("ascii", "replace").split()
    if not commits:
        return []
    found: list[str] = []
    with subprocess.Popen(
        ["git", "-C", str(root), "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        for commit in commits:
            process.stdin.write(f"{commit}:{path}\n".encode())
            process.stdin.flush()
            header = process.stdout.readline(200).split()
            if len(header) != 3:  # "<name> missing": deleted in that commit
                continue
            size = int(header[2])
            data = process.stdout.read(size)
            process.stdout.read(1)  # the newline after every object
            if header[1] != b"blob" or size > limit:
                continue
            revision = hashlib.sha256(data).hexdigest()
            if revision not in found:
                found.append(revision)
        process.stdin.close()
        process.wait(timeout=_GIT_TIMEOUT)
    return found


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            check=False,
            timeout=_GIT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, b"", str(exc).encode())
