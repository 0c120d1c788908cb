"""Reading a fleet repo for the verbs that run in CI or on a laptop, as devices read it.

Shell: `git` reads (`ls-tree`, one `cat-file --batch`, `check-attr`, `diff`) and the few
work-tree reads and writes the CI verbs need; it never changes Git state.

Devices read committed Git objects (`adapters.git_source`): no checkout, no symlink followed, no
submodule entered, no `.gitattributes` conversion, every blob's size judged from Git before any
of it is read. `Snapshot` reads a commit of the checkout's repository the same way, so
`validate`, `release` and `verify` judge exactly the bytes a device gets. The work-tree readers
(`manifest_files`, `read_optional`) serve `plan`'s preview of uncommitted edits and `validate`
outside Git; they refuse symlinks too and read at most their limit. Paths are relative to the
checkout directory and `/`-separated, as the release pins them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from reconciler.core import manifests, safe_yaml
from reconciler.errors import Problem, ProblemsError

APPS_DIR = "apps"
# As on the device (`cycle.MAX_MANIFEST_BYTES`): a manifest over this is refused unread.
MANIFEST_LIMIT = safe_yaml.MAX_BYTES
_GIT_TIMEOUT = 120.0
_OBJECT_ID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
# Mode bits of a tree entry -> what devices call it (as `adapters.git_source` names them).
_KINDS = {0o04: "directory", 0o10: "regular file", 0o12: "symbolic link", 0o16: "submodule"}
# Attributes under which Git rewrites a file between the commit and the work tree, and the
# values that do it ("unspecified"/"unset" never do).
_TRANSFORMING = ("filter", "ident", "eol", "working-tree-encoding")
_QUIET_VALUES = frozenset({"unspecified", "unset"})


@dataclass(frozen=True)
class Entry:
    """One entry of a commit's tree: what it is, its object id and (blobs only) its size."""

    kind: str
    oid: str
    size: int | None


class Snapshot:
    """The files of one commit below the checkout directory, read from Git objects.

    Built by `Snapshot.at(root, rev)`. Reading never follows a symlink, never enters a
    submodule, never applies `.gitattributes`, and never loads a blob over its limit: the size
    comes from the tree listing, before any byte of the blob is read.
    """

    def __init__(self, root: Path, commit: str, entries: dict[str, Entry]) -> None:
        self.root = root
        self.commit = commit
        self._entries = entries

    @classmethod
    def at(cls, root: Path, rev: str = "HEAD") -> Snapshot | None:
        """The commit `rev` names in the repository holding `root`; None when there is none
        (not a Git work tree, no commit yet, or an unknown or malformed `rev`)."""
        if rev != "HEAD" and not _OBJECT_ID.fullmatch(rev):
            return None  # a release's source_commit is untrusted text, never a git option
        found = _git(root, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}")
        commit = found.stdout.decode("ascii", "replace").strip()
        if found.returncode != 0 or not _OBJECT_ID.fullmatch(commit):
            return None
        listing = _git(root, "ls-tree", "-r", "-t", "-l", "-z", commit)
        if listing.returncode != 0:
            return None
        return cls(root, commit, _parse_ls_tree(listing.stdout))

    def entry(self, rel: str) -> Entry | None:
        return self._entries.get(rel)

    def problem(self, rel: str, *, limit: int) -> Problem | None:
        """Why a device would refuse to read `rel`, or None (also None when nothing is there)."""
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            entry = self._entries.get(above)
            if entry is None:
                return None
            if entry.kind in ("symbolic link", "submodule"):
                return Problem(rel, "", f"{above} is a {entry.kind}; devices never follow it")
        entry = self._entries.get(rel)
        if entry is None:
            return None
        if entry.kind == "symbolic link":
            return Problem(rel, "", "is a symbolic link; devices never follow links")
        if entry.kind != "regular file":
            return Problem(rel, "", f"is a {entry.kind}, not a regular file; devices refuse it")
        if entry.size is None or entry.size > limit:
            return Problem(rel, "", f"is {entry.size} bytes, over the limit of {limit} bytes")
        return None

    def read(self, rel: str, *, limit: int) -> bytes | None:
        """The committed bytes of `rel`, or None when nothing is there; ProblemsError when a
        device would refuse it (symlink or submodule on the way, not a file, over `limit`)."""
        found, problems = self.read_many([rel], limit=limit)
        if problems:
            raise ProblemsError(problems)
        return found.get(rel)

    def read_many(
        self, rels: Iterable[str], *, limit: int
    ) -> tuple[dict[str, bytes], list[Problem]]:
        """The committed bytes of each of `rels` that is there, read through one
        `git cat-file --batch`; and a problem for each a device would refuse."""
        wanted: dict[str, str] = {}
        problems: list[Problem] = []
        for rel in rels:
            problem = self.problem(rel, limit=limit)
            if problem is not None:
                problems.append(problem)
            elif (entry := self._entries.get(rel)) is not None:
                wanted[rel] = entry.oid
        found: dict[str, bytes] = {}
        if wanted:
            with _BlobReader(self.root) as reader:
                for rel, oid in wanted.items():
                    data = reader.read(oid, limit=limit)
                    if data is None:
                        problems.append(Problem(rel, "", "cannot be read from the Git objects"))
                    else:
                        found[rel] = data
        return found, problems

    def manifest_files(self) -> tuple[dict[str, bytes], list[Problem]]:
        """Every committed `apps/**/*.yaml` manifest, and a problem for what devices refuse:
        `apps` or anything below it a symlink or a submodule, a manifest over 1 MiB."""
        problems: list[Problem] = []
        top = self._entries.get(APPS_DIR)
        if top is not None and top.kind != "directory":
            message = f"is a {top.kind}; apps/ must be a directory committed in this repo"
            return {}, [Problem(APPS_DIR, "", message)]
        manifest_paths = []
        for rel, entry in sorted(self._entries.items()):
            if not rel.startswith(APPS_DIR + "/"):
                continue
            if entry.kind in ("symbolic link", "submodule"):
                # Never entered: a manifest in it would be validated and pinned for nothing.
                problems.append(Problem(rel, "", f"is a {entry.kind}; devices never follow it"))
            elif manifests.is_manifest_path(rel) and entry.kind == "regular file":
                manifest_paths.append(rel)
        files, read_problems = self.read_many(manifest_paths, limit=MANIFEST_LIMIT)
        return files, problems + read_problems

    def transformed(self, rels: Sequence[str]) -> list[Problem]:
        """A problem for each of `rels` that `.gitattributes` makes Git rewrite on checkout or
        commit (a filter such as LFS, `ident`, `eol=crlf`, `working-tree-encoding`): what the
        work tree shows is then not what devices read. Attributes come from `git check-attr`
        (the work tree's `.gitattributes`, `.git/info/attributes`, `core.attributesFile`)."""
        if not rels:
            return []
        found = _git(
            self.root,
            "check-attr",
            "-z",
            "--stdin",
            *_TRANSFORMING,
            stdin=b"".join(rel.encode("utf-8", "surrogateescape") + b"\0" for rel in rels),
        )
        if found.returncode != 0:
            reason = found.stderr.decode("utf-8", "replace").strip()
            return [Problem(rels[0], "", f"git check-attr failed: {reason}")]
        fields = found.stdout.split(b"\0")
        set_on: dict[str, list[str]] = {}
        for i in range(0, len(fields) - 2, 3):
            rel, name, value = (f.decode("utf-8", "surrogateescape") for f in fields[i : i + 3])
            if value in _QUIET_VALUES or (name == "eol" and value != "crlf"):
                continue
            shown = name if value == "set" else f"{name}={value}"
            set_on.setdefault(rel, []).append(shown)
        return [
            Problem(
                rel,
                "",
                f"Git attribute {', '.join(attrs)} (.gitattributes) rewrites this file between "
                "the commit and the work tree; devices read only the committed bytes: remove "
                "the attribute for this path",
            )
            for rel, attrs in sorted(set_on.items())
        ]


class _BlobReader:
    """One `git cat-file --batch` process: object ids in, contents out, in the same order."""

    def __init__(self, root: Path) -> None:
        self._process = subprocess.Popen(
            ["git", "-C", str(root), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        stdin, stdout = self._pipes()
        with contextlib.suppress(OSError):
            stdin.close()
        try:
            self._process.wait(timeout=_GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        stdout.close()

    def read(self, oid: str, *, limit: int) -> bytes | None:
        """The blob's bytes, or None when it is missing, not a blob or over `limit`."""
        stdin, stdout = self._pipes()
        try:
            stdin.write(oid.encode("ascii") + b"\n")
            stdin.flush()
        except OSError:  # the process died: nothing more can be read
            return None
        header = stdout.readline(200).split()
        if len(header) != 3:  # "<oid> missing" (or a dead process: b"")
            return None
        size = int(header[2])
        if header[1] != b"blob" or size > limit:
            # Callers judge the size from the tree first; skip what cat-file sends anyway.
            remaining = size + 1
            while remaining > 0 and (chunk := stdout.read(min(remaining, 1 << 20))):
                remaining -= len(chunk)
            return None
        data = stdout.read(size)
        stdout.read(1)  # the newline after every object
        return data if len(data) == size else None

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout


def _parse_ls_tree(listing: bytes) -> dict[str, Entry]:
    """`git ls-tree -r -t -l -z` output -> {path: Entry} (paths relative to the directory)."""
    entries: dict[str, Entry] = {}
    for record in listing.split(b"\0"):
        meta, tab, raw_path = record.partition(b"\t")
        fields = meta.split()
        if not tab or len(fields) != 4 or raw_path in (b"./", b"."):
            continue
        mode, _type, oid, size = (f.decode("ascii", "replace") for f in fields)
        kind = _KINDS.get(int(mode, 8) >> 12, f"object of mode {mode}")
        path = raw_path.decode("utf-8", "surrogateescape")
        entries[path] = Entry(kind=kind, oid=oid, size=int(size) if size.isdigit() else None)
    return entries


def work_tree_changes(root: Path, prefixes: Sequence[str]) -> list[str]:
    """Paths under `prefixes` whose work tree differs from HEAD (changed, staged, deleted or
    untracked; ignored files are left out), relative to `root`, sorted. Empty outside Git."""
    # Literal: a path from a release must not be read as pathspec magic (":(exclude)...").
    changed = _git(
        root,
        "--literal-pathspecs",
        "diff",
        "--name-only",
        "-z",
        "--relative",
        "HEAD",
        "--",
        *prefixes,
    )
    others = _git(
        root,
        "--literal-pathspecs",
        "ls-files",
        "-z",
        "--others",
        "--exclude-standard",
        "--",
        *prefixes,
    )
    if changed.returncode != 0 or others.returncode != 0:
        return []
    return sorted(
        {
            name.decode("utf-8", "surrogateescape")
            for name in (changed.stdout + others.stdout).split(b"\0")
            if name
        }
    )


# --- the work tree ---------------------------------------------------------------------------


def manifest_files(root: Path) -> tuple[dict[str, bytes], list[Problem]]:
    """Every `apps/**/*.yaml` file of the work tree under `root`, keyed by its relative path.

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
    for directory, subdirs, names in os.walk(apps_dir):  # never descends into a symlink
        base = Path(directory)
        for name in sorted(subdirs):
            if (base / name).is_symlink():
                rel = (base / name).relative_to(root).as_posix()
                problems.append(
                    Problem(rel, "", "is a symlink to a directory; devices do not follow it")
                )
        for name in sorted(names):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if not manifests.is_manifest_path(rel):
                continue
            if path.is_symlink():
                problems.append(Problem(rel, "", "is a symlink; manifests must be regular files"))
                continue
            try:
                files[rel] = read_capped(path, safe_yaml.MAX_BYTES + 1)
            except OSError as exc:
                problems.append(Problem(rel, "", f"cannot be read: {exc.strerror or exc}"))
    return dict(sorted(files.items())), problems


def read_capped(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; OSError for anything else (a FIFO or device
    would block or never end) and for a symlink at `path` itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "is a symbolic link; links are never followed") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(0, "not a regular file")
        return handle.read(limit)


def link_problem(root: Path, rel: str) -> Problem | None:
    """Why the work-tree path `rel` must not be read or written: a symlink at it or on the way
    there (reading would leave the repo; writing would land outside it), or something other
    than a directory on the way. None when it is a plain path (it need not exist)."""
    parts = rel.split("/")
    path = root
    for depth, name in enumerate(parts, start=1):
        path = path / name
        here = "/".join(parts[:depth])
        if path.is_symlink():
            where = "is a symbolic link" if depth == len(parts) else f"{here} is a symbolic link"
            return Problem(rel, "", f"{where} in the work tree; it is never followed")
        if depth < len(parts) and path.exists() and not path.is_dir():
            return Problem(rel, "", f"{here} is not a directory in the work tree")
    return None


def read_optional(root: Path, rel: str, *, limit: int = safe_yaml.MAX_BYTES + 1) -> bytes | None:
    """A regular file of the work tree, or None when nothing exists at `rel`.

    Raises ProblemsError when something is there but cannot be used (a symlink at it or on the
    way, a directory, unreadable): treating it as absent could, for a release file, restart
    versions at 1.
    """
    problem = link_problem(root, rel)
    if problem is not None:
        raise ProblemsError([problem])
    path = root / rel
    if not path.exists():
        return None
    if not path.is_file():
        raise ProblemsError([Problem(rel, "", "is not a regular file; expected a regular file")])
    try:
        return read_capped(path, limit)
    except OSError as exc:
        raise ProblemsError([Problem(rel, "", f"cannot be read: {exc.strerror or exc}")]) from None


def replace_file(root: Path, rel: str, data: bytes) -> None:
    """Write `data` at `rel` atomically (temp file beside it, then rename): a reader never sees
    half a file. Raises ProblemsError for a symlink on the way, OSError when writing fails."""
    problem = link_problem(root, rel)
    if problem is not None:
        raise ProblemsError([problem])
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates a new file (O_EXCL): a planted symlink at a fixed temp name cannot
    # redirect the write.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        temporary.chmod(0o644)
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def head_commit(root: Path) -> str:
    """The commit the checkout is at, or "" when it is not a Git work tree (or has no commit)."""
    result = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def _git(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=_GIT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, b"", str(exc).encode())


def lines_of(paths: Iterable[str], *, limit: int = 20) -> Iterator[str]:
    """`paths`, then "... and N more" past `limit`: a long list stays readable in a CI log."""
    shown = list(paths)
    yield from shown[:limit]
    if len(shown) > limit:
        yield f"... and {len(shown) - limit} more"
