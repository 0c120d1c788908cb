"""Git source adapter: the fleet repo as seen by the device, through GitPython and the git CLI.

Owns a bare cache repo (`cache_dir`, e.g. `<state_dir>/mirror.git`), the cheap head query
(`git_refs.HeadQuery` in this process for https, http and git URLs, on one kept-alive connection
per remote; `git ls-remote` for ssh, file URLs, local paths, and remotes git would reach through a
proxy), shallow fetches of a moved head, and size-capped reads of files at a commit
straight from Git objects. Remotes are the url then its mirrors, tried in order. The cycle calls
`head()`, `ensure()`, then `read()`/`list_files()`.

Must not: run a shell (every git call is an argument list), check anything out (no worktree, so
no symlink can be followed and no hook or filter runs on content), trust the cache (it is only
a cache: the release signature is verified on every read by the caller), sleep or retry (the
daemon backs off, see `reconciler.core.backoff`), log on success, or let a credential embedded in a
URL reach a log line, an error message or a metric label (only redacted names leave this module).

Not thread-safe: GitPython keeps one `git cat-file --batch` process per repo; use one GitSource
per thread.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import git

from reconciler import errors, logs
from reconciler import text as text_mod
from reconciler.adapters import git_refs
from reconciler.core.urls import branch_problem, redact, scrub, url_problem
from reconciler.errors import FileRejected, RemotesFailed

DEFAULT_TIMEOUT = 60.0

_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_KINDS = {0o04: "directory", 0o10: "regular file", 0o12: "symbolic link", 0o16: "submodule"}

# Applied to every git call through the environment (git >= 2.31 reads GIT_CONFIG_COUNT), so a
# cache created by an older version of this code gets them too.
_GIT_CONFIG = (
    # A power cut must not leave a torn object or ref that later reads as "present".
    ("core.fsync", "committed"),
    # gc runs inside our timeout and never behind our back holding locks.
    ("gc.autoDetach", "false"),
    ("maintenance.autoDetach", "false"),
    # Objects come from a server or mirror we do not trust: reject malformed ones at the door.
    ("transfer.fsckObjects", "true"),
)
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # a daemon has nobody to type a password
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",  # no ext::, fd:: or other helpers
    "GIT_CONFIG_COUNT": str(len(_GIT_CONFIG)),
    **{f"GIT_CONFIG_KEY_{i}": key for i, (key, _) in enumerate(_GIT_CONFIG)},
    **{f"GIT_CONFIG_VALUE_{i}": value for i, (_, value) in enumerate(_GIT_CONFIG)},
}


@dataclass(frozen=True)
class RemoteHead:
    """The branch head one remote reported; `remote` is its redacted name (safe to log).

    `failures` are the (redacted remote, reason) of remotes tried before it, so the daemon can
    count `reconciler_fetch_errors_total{remote}` for a primary that is down behind a mirror.
    """

    commit: str
    remote: str
    failures: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Remote:
    given: str  # as configured: may hold credentials, goes to git only
    arg: str  # what git receives (local paths made absolute)
    name: str  # redacted: for messages, logs and metric labels


def _remote(url: str) -> _Remote:
    problem = url_problem(url)
    if problem:
        raise ValueError(f"source url {redact(url)!r}: {problem}")
    # git's rule: "[user@]host:path" is ssh when no "/" comes before the first ":".
    head, colon, _ = url.partition(":")
    if "://" in url or (colon and "/" not in head):
        return _Remote(given=url, arg=url, name=redact(url))
    # A plain path: absolute now, because git runs with the cache repo as its directory.
    return _Remote(given=url, arg=str(Path(url).absolute()), name=url)


class GitSource:
    """The fleet repo: remotes in order, one branch, one bare cache repo."""

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str],
        urls: Sequence[str],
        branch: str,
        logger: logging.Logger | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        sole_user: bool = False,
        ref_query: bool = True,
    ) -> None:
        """`sole_user`: no other process uses `cache_dir` (the caller holds state_dir's lock),
        so a git lock file found there before a fetch is a leftover of a killed run.
        `ref_query=False` asks every remote with `git ls-remote` (the benchmark's baseline)."""
        if not urls:
            raise ValueError("source: at least one url is needed")
        problem = branch_problem(branch)
        if problem:
            raise ValueError(f"source branch: {problem}")
        self._remotes = tuple(_remote(u) for u in urls)
        self._branch = branch
        self._ref = f"refs/heads/{branch}"
        self._tracking = f"refs/remotes/origin/{branch}"  # keeps fetched objects from gc
        self._cache_dir = Path(cache_dir).absolute()
        self._log = logger or logging.getLogger(__name__)
        self._timeout = timeout
        self._sole_user = sole_user
        self._repo: git.Repo | None = None
        # In-process head queries, by the url as given; the remotes left out keep ls-remote.
        wanted = ref_query and any(_queryable(r.given) for r in self._remotes)
        tls = _git_tls_context() if wanted else None
        self._queries = {
            r.given: git_refs.HeadQuery(r.given, branch, timeout=timeout, tls=tls)
            for r in self._remotes
            if ref_query and _queryable(r.given)
        }

    @property
    def remotes(self) -> tuple[str, ...]:
        """Redacted remote names in the order tried (metric label values)."""
        return tuple(r.name for r in self._remotes)

    def close(self) -> None:
        """Stop the cat-file helper processes and close the kept-alive connections; the next
        call restarts them."""
        for query in self._queries.values():
            query.close()
        self._close_repo()

    def _close_repo(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def __enter__(self) -> GitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- network ---------------------------------------------------------------------------

    def head(self) -> RemoteHead:
        """The branch head from the first remote that answers (a ref query, no fetch)."""
        failures: list[tuple[str, str]] = []
        for remote in self._remotes:
            query = self._queries.get(remote.given)
            if query is not None:
                try:
                    commit = query.head()
                except git_refs.QueryFailed as exc:
                    failures.append((remote.name, exc.reason))
                    continue
            else:
                status, out, err = self._run("ls-remote", "--", remote.arg, self._ref)
                if status != 0:
                    failures.append((remote.name, self._reason(status, err)))
                    continue
                commit = _parse_ls_remote(out, self._ref)
            if commit is not None:
                self._note_failover(failures, remote)
                return RemoteHead(commit=commit, remote=remote.name, failures=tuple(failures))
            failures.append((remote.name, f"branch {self._branch} not found on {remote.name}"))
        raise RemotesFailed(f"head of branch {self._branch}", failures)

    def ensure(self, commit: str, remote: str) -> None:
        """Make `commit` readable from the cache: nothing if present, else a shallow fetch.

        `remote` is the name from `RemoteHead` (or a configured url); it is tried first, the
        other remotes after it, until one fetch brings the commit.
        """
        sha = _check_sha(commit)
        self._open()
        if self._has_commit(sha):
            return
        first = next((r for r in self._remotes if remote in (r.name, r.given)), None)
        if first is None:
            raise ValueError(f"remote {redact(remote)!r} is not one of {list(self.remotes)}")
        failures: list[tuple[str, str]] = []
        for candidate in (first, *(r for r in self._remotes if r is not first)):
            reason = self._fetch(candidate)
            if reason is None and self._has_commit(sha):
                self._note_failover(failures, candidate)
                return
            if reason is None:
                reason = f"branch {self._branch} no longer points at {sha} (moved since the query)"
            failures.append((candidate.name, reason))
        self._close_repo()  # the next call re-runs `git init`: repairs a cache deleted under us
        raise RemotesFailed(f"fetch {sha} of branch {self._branch}", failures)

    def contains(self, commit: str) -> bool:
        """Whether `commit` is in the cache already (no network)."""
        sha = _check_sha(commit)
        self._open()
        return self._has_commit(sha)

    def _fetch(self, remote: _Remote) -> str | None:
        """Fetch the branch from `remote`; the failure reason, or None on success."""
        self._clear_stale_locks()
        refspec = f"+{self._ref}:{self._tracking}"
        base = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules")
        status, _, err = self._run(*base, "--depth", "1", "--", remote.arg, refspec)
        if status != 0 and re.search(r"shallow|depth", err, re.IGNORECASE):
            # Dumb HTTP servers (and some old ones) refuse shallow fetches: fetch in full.
            status, _, err = self._run(*base, "--", remote.arg, refspec)
        return None if status == 0 else self._reason(status, err)

    def _note_failover(self, failures: list[tuple[str, str]], used: _Remote) -> None:
        # Success after failures: the operator should learn that the primary is down.
        if failures:
            failed = "; ".join(f"{name}: {reason}" for name, reason in failures)
            logs.event(
                self._log, logging.WARNING, "fetch.failover", remote=used.name, failed=failed
            )

    # --- objects ---------------------------------------------------------------------------

    def read(self, commit: str, path: str, *, max_bytes: int) -> bytes | None:
        """Bytes of the regular file `path` at `commit`, or None if no such path.

        A symlink, submodule or directory at (or on the way to) `path` raises FileRejected and
        is never followed; so does a blob over `max_bytes`, judged by its header before any of
        its data is read.
        """
        sha, parts = _check_sha(commit), _split(path)
        try:
            tree = self._tree(sha)
            entry = _walk(tree, parts, path)
            if entry is None:
                return None
            kind = _kind(entry.mode)
            if kind == "symbolic link":
                raise FileRejected(path, "is a symbolic link; links are never followed")
            if kind != "regular file":
                raise FileRejected(path, f"is a {kind}, not a regular file")
            size = self._open().odb.info(entry.binsha).size
            if size > max_bytes:
                raise FileRejected(path, f"is {size} bytes, over the limit of {max_bytes}")
            data: bytes = self._open().odb.stream(entry.binsha).read()
        except (git.GitError, ValueError, OSError) as exc:
            raise self._cache_error(exc) from exc
        return data

    def list_files(self, commit: str, prefix: str = "") -> list[str]:
        """Sorted paths of the regular files under `prefix` ("apps/"; "" for all) at `commit`.

        Symlinks and submodules below the prefix are left out (read() would refuse them).
        """
        sha, parts = _check_sha(commit), _split(prefix.rstrip("/")) if prefix else []
        try:
            tree = self._tree(sha)
            if parts:
                entry = _walk(tree, parts, prefix)
                if entry is None or _kind(entry.mode) == "regular file":
                    return []
                if not isinstance(entry, git.Tree):
                    raise FileRejected(prefix, f"is a {_kind(entry.mode)}; it is never followed")
                tree = entry
            return sorted(
                str(item.path)  # a str for a tree entry; GitPython types it as any path
                for item in tree.traverse()
                if isinstance(item, git.Blob) and _kind(item.mode) == "regular file"
            )
        except (git.GitError, ValueError, OSError) as exc:
            raise self._cache_error(exc) from exc

    def _tree(self, sha: str) -> git.Tree:
        repo = self._open()
        if not self._has_commit(sha):
            raise errors.FetchError(f"commit {sha} is not in the cache {self._cache_dir}")
        return git.Commit(repo, bytes.fromhex(sha)).tree

    def _has_commit(self, sha: str) -> bool:
        try:
            return self._open().odb.info(bytes.fromhex(sha)).type == b"commit"
        except ValueError as exc:
            if str(exc).endswith(" missing'"):  # cat-file's answer for an absent object
                return False
            raise self._cache_error(exc) from exc
        except (git.GitError, OSError) as exc:
            raise self._cache_error(exc) from exc

    def _cache_error(self, exc: Exception) -> errors.FetchError:
        # The cat-file helper may be dead or the cache damaged: start afresh on the next call.
        self._close_repo()
        return errors.FetchError(f"cannot read the cache {self._cache_dir}: {scrub(str(exc))}")

    # --- plumbing --------------------------------------------------------------------------

    def _open(self) -> git.Repo:
        if self._repo is None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            runner = git.Git(str(self._cache_dir))
            runner.update_environment(**_GIT_ENV, GIT_DIR=str(self._cache_dir))
            # Re-running `git init` on a whole cache would rewrite its config on every start (a
            # flash write per `reconciler once`): only a missing or half-created one gets it.
            if not _is_bare_repo(self._cache_dir):
                # Idempotent, so it also repairs a half-created cache; no templates: no hooks.
                status, _, err = self._run(
                    "init", "--quiet", "--bare", "--template=", runner=runner
                )
                if status != 0:
                    raise errors.FetchError(
                        f"cannot create the cache {self._cache_dir}: {err.strip()}"
                    )
            repo = git.Repo(str(self._cache_dir))
            repo.git.update_environment(**_GIT_ENV, GIT_DIR=str(self._cache_dir))
            self._repo = repo
        return self._repo

    def _run(self, *args: str, runner: git.Git | None = None) -> tuple[int, str, str]:
        runner = runner or self._open().git
        try:
            status, out, err = runner.execute(
                [runner.GIT_PYTHON_GIT_EXECUTABLE or "git", *args],
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=self._timeout,
            )
        except git.GitCommandNotFound as exc:
            return 127, "", f"git not found: {exc}"
        return int(status or 0), str(out), self._scrub(str(err))

    def _reason(self, status: int, stderr: str) -> str:
        if status == -9 or stderr.startswith("Timeout:"):
            return f"timed out after {self._timeout:g}s"
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        if not lines:
            return f"git exited with status {status}"
        # The first fatal line says what went wrong; later ones are generic advice.
        first = next((i for i, ln in enumerate(lines) if ln.startswith(("fatal:", "error:"))), 0)
        text = lines[first]
        if text.endswith(":") and first + 1 < len(lines):  # "unable to connect to host:" + errno
            text = f"{text} {lines[first + 1]}"
        # A server may send anything: its bytes reach the reason (and status) escaped.
        return text_mod.one_line(re.sub(r"^(fatal|error):\s*", "", text), limit=300)

    def _scrub(self, text: str) -> str:
        """git's output with each remote as given shown by its redacted name, then any other
        `scheme://...@` credential hidden (urls.scrub, the one scrubber)."""
        for remote in self._remotes:
            if remote.given != remote.name:
                text = text.replace(remote.given, remote.name)
        return scrub(text)

    def _clear_stale_locks(self) -> None:
        # A lock left by a git killed at a timeout or a power cut would block every later fetch.
        # Any git of ours is killed at the timeout, so a lock older than that is nobody's; with
        # the cache to ourselves (state_dir locked), every lock is a killed run's.
        limit = time.time() + 1 if self._sole_user else time.time() - self._timeout - 5
        for lock in (*self._cache_dir.glob("*.lock"), *self._cache_dir.glob("refs/**/*.lock")):
            try:
                if lock.stat().st_mtime < limit:
                    lock.unlink()
            except FileNotFoundError:
                pass


def _queryable(url: str) -> bool:
    """Whether `git_refs` asks this remote in process: an https, http or git URL that git
    would reach directly (a proxy or a TLS setting it alone knows keeps `git ls-remote`)."""
    if not git_refs.supports(url):
        return False
    scheme = url.partition("://")[0].lower()
    if scheme == "git":
        return not os.environ.get("GIT_PROXY_COMMAND")
    if os.environ.get("GIT_SSL_NO_VERIFY") or os.environ.get("GIT_SSL_CERT"):
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(urlsplit(url).hostname or ""))


def _git_tls_context() -> ssl.SSLContext:
    """One TLS context for every https remote, with the CA bundle git would use: GIT_SSL_CAINFO
    alone when set, else the system store (SSL_CERT_FILE overrides it)."""
    return ssl.create_default_context(cafile=os.environ.get("GIT_SSL_CAINFO") or None)


def _is_bare_repo(cache_dir: Path) -> bool:
    """Whether `cache_dir` has everything `git init --bare` makes (else init repairs it)."""
    return (
        (cache_dir / "HEAD").is_file()
        and (cache_dir / "config").is_file()
        and (cache_dir / "objects").is_dir()
        and (cache_dir / "refs").is_dir()
    )


def _parse_ls_remote(out: str, ref: str) -> str | None:
    # ls-remote patterns match ref tails ("refs/heads/main" also matches "x/refs/heads/main").
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref and _SHA.fullmatch(sha):
            return sha
    return None


def _check_sha(commit: str) -> str:
    if not _SHA.fullmatch(commit):
        raise ValueError(f"commit: expected a full hex object id, got {commit!r}")
    return commit


def _split(path: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or any(p in {"", ".", ".."} or "\0" in p for p in parts):
        raise FileRejected(path, "is not a relative path inside the repo")
    return parts


def _walk(tree: git.Tree, parts: list[str], path: str) -> git.objects.base.IndexObject | None:
    """The entry at `parts` under `tree`, or None; never steps through a symlink or gitlink."""
    node: git.objects.base.IndexObject = tree
    for depth, name in enumerate(parts):
        if not isinstance(node, git.Tree):
            kind = _kind(node.mode)
            if kind == "regular file":
                return None  # "a/b" where "a" is a file: no such path
            where = "/".join(parts[:depth])
            raise FileRejected(path, f"{where} is a {kind}; it is never followed")
        try:
            node = node.join(name)  # a single name: one scan of this tree's entries
        except KeyError:
            return None
    return node


def _kind(mode: int) -> str:
    return _KINDS.get(mode >> 12, f"object of mode {mode:o}")
