"""Fleet repos made with real `git`, and the one environment every test, bench and demo runs git in.

Owns: `GIT_ENV`; `FleetRepo`, a checkout with a work tree that tests write files into and commit
(`git add`), as an operator or a CI job does, which the CLI reads and `reconciler release` writes
into; `BareFleetRepo` with `make_repo` / `clone_repo` / `commit_files`, a bare repo committed to
with plumbing (symlinks and submodules included), which the servers in `git_server` serve and a
device fetches; `manifest`, an App manifest as text.

Every git call is an argument list, never a shell, and runs with `GIT_ENV`: a fixed author,
committer and date and no user or system config, so the same files on the same parent give the
same commit id on every run and machine (a mirror built by committing the same files matches its
primary), and git's messages are in English (LC_ALL=C) where tests read them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Operator",
    "GIT_AUTHOR_EMAIL": "operator@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "Fleet Operator",
    "GIT_COMMITTER_EMAIL": "operator@example.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}


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


# --- a checkout -------------------------------------------------------------------------------


class FleetRepo:
    """A fleet repo checkout (a work tree) in a fresh Git repository, as an operator or CI has."""

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


# --- a bare repo ------------------------------------------------------------------------------


def _git(*args: str, input_bytes: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    done = subprocess.run(
        ["git", *args], input=input_bytes, capture_output=True, env=full_env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode().strip()


@dataclass(frozen=True)
class BareFleetRepo:
    """A bare repo on disk that tests commit to with plumbing and servers serve."""

    path: Path
    branch: str = "main"

    def commit(
        self,
        files: Mapping[str, bytes | None],
        message: str = "change",
        *,
        symlinks: Mapping[str, str] | None = None,
        submodules: Mapping[str, str] | None = None,
    ) -> str:
        return commit_files(
            self.path,
            files,
            message,
            branch=self.branch,
            symlinks=symlinks,
            submodules=submodules,
        )

    def head(self) -> str:
        return _git("--git-dir", str(self.path), "rev-parse", f"refs/heads/{self.branch}")

    @property
    def file_url(self) -> str:
        return self.path.resolve().as_uri()


def make_repo(path: Path | str, *, branch: str = "main") -> BareFleetRepo:
    """An empty bare repo at `path` whose default branch is `branch`."""
    target = Path(path)
    _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(target))
    return BareFleetRepo(path=target, branch=branch)


def clone_repo(source: BareFleetRepo, path: Path | str) -> BareFleetRepo:
    """A bare copy of `source` (a mirror with the same commit ids)."""
    target = Path(path)
    _git("clone", "--quiet", "--bare", str(source.path), str(target))
    _git("--git-dir", str(target), "update-server-info")
    return BareFleetRepo(path=target, branch=source.branch)


def commit_files(
    repo_path: Path | str,
    files: Mapping[str, bytes | None],
    message: str,
    *,
    branch: str = "main",
    symlinks: Mapping[str, str] | None = None,
    submodules: Mapping[str, str] | None = None,
) -> str:
    """Commit on top of `branch`: `files` written (None deletes), `symlinks` as path -> target,
    `submodules` as path -> commit id (gitlinks). Returns the new commit id."""
    git_dir = str(repo_path)
    ref = f"refs/heads/{branch}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            parent: str | None = _git("--git-dir", git_dir, "rev-parse", "--verify", "-q", ref)
        except RuntimeError:
            parent = None
        if parent:
            _git("--git-dir", git_dir, "read-tree", parent, env=env)
        # One --index-info batch; mode 0 removes a path, --replace lets a file or link take a
        # directory's place (and the reverse).
        lines: list[str] = []
        for name, data in files.items():
            if data is None:
                lines.append(f"0 {'0' * 40}\t{name}")
                continue
            blob = _git("--git-dir", git_dir, "hash-object", "-w", "--stdin", input_bytes=data)
            lines.append(f"100644 {blob}\t{name}")
        for name, target in (symlinks or {}).items():
            blob = _git(
                "--git-dir", git_dir, "hash-object", "-w", "--stdin", input_bytes=target.encode()
            )
            lines.append(f"120000 {blob}\t{name}")
        lines.extend(f"160000 {sha}\t{name}" for name, sha in (submodules or {}).items())
        if lines:
            index_info = ("\n".join(lines) + "\n").encode()
            _git(
                "--git-dir",
                git_dir,
                "update-index",
                "--replace",
                "--index-info",
                input_bytes=index_info,
                env=env,
            )
        tree = _git("--git-dir", git_dir, "write-tree", env=env)
    parents = ["-p", parent] if parent else []
    commit = _git("--git-dir", git_dir, "commit-tree", tree, *parents, "-m", message)
    _git("--git-dir", git_dir, "update-ref", ref, commit)
    # Dumb HTTP clients read info/refs and objects/info/packs: keep them current.
    _git("--git-dir", git_dir, "update-server-info")
    return commit
