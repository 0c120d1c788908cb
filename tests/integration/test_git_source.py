"""GitSource against real git: bare repos, git daemon, smart and dumb HTTP, file URLs, paths."""

from __future__ import annotations

import logging
import os
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters import git_source
from reconciler.adapters.git_source import GitSource
from reconciler.errors import FileRejected, RemotesFailed
from testkit.fleet_repos import BareFleetRepo, clone_repo, make_repo
from testkit.git_server import GitDaemon, GitDumbHttpServer, GitHttpServer
from testkit.loopback import free_port

RELEASE = ".fleet/release.json"
MANIFEST = "apps/gw/app.yaml"
MiB = 1024 * 1024

MakeSource = Callable[..., GitSource]


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    path = tmp_path / "srv"
    path.mkdir()
    return path


@pytest.fixture
def fleet(srv: Path) -> BareFleetRepo:
    repo = make_repo(srv / "fleet.git")
    repo.commit({RELEASE: b'{"version": 1}\n', MANIFEST: b"name: gw\n"}, "first")
    return repo


@pytest.fixture
def daemon(srv: Path) -> Iterator[GitDaemon]:
    with GitDaemon(srv) as server:
        yield server


@pytest.fixture
def http(srv: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(srv) as server:
        yield server


@pytest.fixture
def make_source(tmp_path: Path) -> Iterator[MakeSource]:
    made: list[GitSource] = []

    def make(
        *urls: str, branch: str = "main", timeout: float = 20.0, sole_user: bool = False
    ) -> GitSource:
        source = GitSource(
            cache_dir=str(tmp_path / "state" / "mirror.git"),
            urls=list(urls),
            branch=branch,
            timeout=timeout,
            sole_user=sole_user,
        )
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def _nowhere() -> str:
    return f"git://127.0.0.1:{free_port()}/fleet.git"


# --- the cycle: head, ensure, read --------------------------------------------------------------


def test_head_reports_the_branch_head_without_fetching(
    fleet: BareFleetRepo, make_source: MakeSource
):
    source = make_source(fleet.file_url)
    head = source.head()
    assert head.commit == fleet.head()
    assert head.remote == fleet.file_url
    assert not source.contains(head.commit)


@pytest.mark.parametrize(
    "kind", ["git", "smart-http", "dumb-http", "file-url", "abs-path", "rel-path"]
)
def test_every_kind_of_url_serves_head_fetch_and_read(
    kind: str,
    fleet: BareFleetRepo,
    srv: Path,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
):
    with GitDaemon(srv) as daemon, GitHttpServer(srv) as smart, GitDumbHttpServer(srv) as dumb:
        monkeypatch.chdir(srv.parent)
        url = {
            "git": daemon.url("fleet.git"),
            "smart-http": smart.url("fleet.git"),
            "dumb-http": dumb.url("fleet.git"),  # refuses shallow: the full fetch takes over
            "file-url": fleet.file_url,
            "abs-path": str(fleet.path),
            "rel-path": os.path.join("srv", "fleet.git"),
        }[kind]
        source = make_source(url)
        head = source.head()
        source.ensure(head.commit, head.remote)
    assert head.commit == fleet.head()
    assert source.read(head.commit, MANIFEST, max_bytes=1024) == b"name: gw\n"
    shallow = srv.parent / "state" / "mirror.git" / "shallow"
    assert shallow.exists() == (kind != "dumb-http")


def test_ensure_fetches_once_and_then_needs_no_network(
    fleet: BareFleetRepo, daemon: GitDaemon, make_source: MakeSource
):
    source = make_source(daemon.url("fleet.git"))
    head = source.head()
    source.ensure(head.commit, head.remote)
    daemon.stop()
    source.ensure(head.commit, head.remote)  # would fail if it touched the network
    assert source.read(head.commit, RELEASE, max_bytes=1024) == b'{"version": 1}\n'
    with pytest.raises(RemotesFailed):
        source.head()


def test_fetch_is_shallow(
    fleet: BareFleetRepo, daemon: GitDaemon, make_source: MakeSource, tmp_path
):
    first = fleet.head()
    second = fleet.commit({MANIFEST: b"name: gw\nv: 2\n"}, "second")
    source = make_source(daemon.url("fleet.git"))
    source.ensure(second, source.head().remote)
    assert source.contains(second)
    assert not source.contains(first)  # the parent was not downloaded
    shallow = tmp_path / "state" / "mirror.git" / "shallow"
    assert shallow.read_text().split() == [second]


def test_a_new_commit_moves_the_head_and_is_fetched(
    fleet: BareFleetRepo, http: GitHttpServer, make_source: MakeSource
):
    source = make_source(http.url("fleet.git"))
    old = source.head()
    source.ensure(old.commit, old.remote)
    new_commit = fleet.commit({MANIFEST: b"name: gw\nv: 2\n"}, "second")
    new = source.head()
    assert new.commit == new_commit != old.commit
    assert not source.contains(new.commit)
    source.ensure(new.commit, new.remote)
    assert source.read(new.commit, MANIFEST, max_bytes=1024) == b"name: gw\nv: 2\n"
    # The older commit stays readable from the cache.
    assert source.read(old.commit, MANIFEST, max_bytes=1024) == b"name: gw\n"


def test_a_head_that_moved_after_the_query_fails_ensure_with_the_reason(
    fleet: BareFleetRepo, make_source: MakeSource
):
    source = make_source(fleet.file_url)
    stale = source.head()
    fleet.commit({MANIFEST: b"name: gw\nv: 2\n"}, "second")
    with pytest.raises(RemotesFailed, match="no longer points at") as caught:
        source.ensure(stale.commit, stale.remote)
    assert caught.value.failures[0][0] == fleet.file_url


def test_ensure_refuses_a_remote_it_was_not_configured_with(
    fleet: BareFleetRepo, make_source: MakeSource
):
    source = make_source(fleet.file_url)
    with pytest.raises(ValueError, match="not one of"):
        source.ensure(fleet.head(), "git://127.0.0.1:9/other.git")


def test_reading_a_commit_that_was_never_fetched_is_a_fetch_error(
    fleet: BareFleetRepo, make_source: MakeSource
):
    source = make_source(fleet.file_url)
    with pytest.raises(errors.FetchError, match="not in the cache"):
        source.read(fleet.head(), RELEASE, max_bytes=1024)


def test_a_stale_lock_from_a_power_cut_does_not_block_fetching(
    fleet: BareFleetRepo, make_source: MakeSource, tmp_path: Path
):
    source = make_source(fleet.file_url, timeout=5)
    source.head()  # creates the cache
    lock = tmp_path / "state" / "mirror.git" / "refs" / "remotes" / "origin" / "main.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    os.utime(lock, (time.time() - 60, time.time() - 60))
    source.ensure(fleet.head(), fleet.file_url)
    assert source.contains(fleet.head())


def test_a_fresh_lock_of_a_killed_run_does_not_block_the_sole_user_of_the_cache(
    fleet: BareFleetRepo, make_source: MakeSource, tmp_path: Path
):
    # `reconciler once` SIGKILLed during a fetch, then run again at once: it holds state_dir's
    # lock, so the lock file the killed git left is nobody's, however young.
    source = make_source(fleet.file_url, sole_user=True)
    source.head()  # creates the cache
    lock = tmp_path / "state" / "mirror.git" / "refs" / "remotes" / "origin" / "main.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    source.ensure(fleet.head(), fleet.file_url)
    assert source.contains(fleet.head())


# --- reads from objects -----------------------------------------------------------------------


@pytest.fixture
def fetched(fleet: BareFleetRepo, make_source: MakeSource) -> tuple[GitSource, BareFleetRepo]:
    source = make_source(fleet.file_url)
    return source, fleet


def _ensure_head(source: GitSource) -> str:
    head = source.head()
    source.ensure(head.commit, head.remote)
    return head.commit


def test_a_missing_path_reads_as_none(fetched: tuple[GitSource, BareFleetRepo]):
    source, _ = fetched
    commit = _ensure_head(source)
    assert source.read(commit, "apps/nope/app.yaml", max_bytes=1024) is None
    assert source.read(commit, f"{MANIFEST}/below-a-file", max_bytes=1024) is None


def test_a_symlink_is_rejected_and_never_followed(fetched: tuple[GitSource, BareFleetRepo]):
    source, fleet = fetched
    fleet.commit({RELEASE: None}, "link", symlinks={RELEASE: "../../etc/passwd", "apps": "/etc"})
    commit = _ensure_head(source)
    with pytest.raises(FileRejected, match=r"\.fleet/release\.json: is a symbolic link"):
        source.read(commit, RELEASE, max_bytes=1024)


def test_a_symlinked_directory_on_the_way_is_rejected(fetched: tuple[GitSource, BareFleetRepo]):
    source, fleet = fetched
    fleet.commit({MANIFEST: None}, "link dir", symlinks={"apps": "/etc"})
    commit = _ensure_head(source)
    with pytest.raises(FileRejected, match="apps is a symbolic link"):
        source.read(commit, "apps/passwd", max_bytes=1024)
    with pytest.raises(FileRejected, match="symbolic link"):
        source.list_files(commit, "apps/")


def test_a_submodule_or_a_directory_is_not_a_file(fetched: tuple[GitSource, BareFleetRepo]):
    source, fleet = fetched
    fleet.commit({}, "gitlink", submodules={"apps/vendored": fleet.head()})
    commit = _ensure_head(source)
    with pytest.raises(FileRejected, match="is a submodule"):
        source.read(commit, "apps/vendored", max_bytes=1024)
    with pytest.raises(FileRejected, match="is a directory"):
        source.read(commit, "apps/gw", max_bytes=1024)


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "apps//gw", "apps/./gw", ""])
def test_a_path_outside_the_repo_is_rejected(fetched: tuple[GitSource, BareFleetRepo], path: str):
    source, _ = fetched
    commit = _ensure_head(source)
    with pytest.raises(FileRejected, match="not a relative path"):
        source.read(commit, path, max_bytes=1024)


def test_an_oversized_blob_is_rejected_before_its_data_is_read(
    fetched: tuple[GitSource, BareFleetRepo],
):
    source, fleet = fetched
    fleet.commit({"apps/big/app.yaml": bytes(64 * MiB)}, "big")
    commit = _ensure_head(source)
    tracemalloc.start()
    try:
        with pytest.raises(FileRejected, match=f"is {64 * MiB} bytes, over the limit of {MiB}"):
            source.read(commit, "apps/big/app.yaml", max_bytes=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB  # the 64 MiB never entered this process


def test_a_file_exactly_at_the_limit_is_read(fetched: tuple[GitSource, BareFleetRepo]):
    source, fleet = fetched
    fleet.commit({"apps/exact/app.yaml": b"x" * 4096}, "exact")
    commit = _ensure_head(source)
    assert source.read(commit, "apps/exact/app.yaml", max_bytes=4096) == b"x" * 4096


def test_list_files_names_regular_files_under_a_prefix(fetched: tuple[GitSource, BareFleetRepo]):
    source, fleet = fetched
    fleet.commit(
        {"apps/db/app.yaml": b"name: db\n", "devices/inventory.yaml": b"{}\n"},
        "more",
        symlinks={"apps/evil/app.yaml": "/etc/passwd"},
    )
    commit = _ensure_head(source)
    assert source.list_files(commit, "apps/") == ["apps/db/app.yaml", MANIFEST]
    assert source.list_files(commit, "apps") == ["apps/db/app.yaml", MANIFEST]
    assert source.list_files(commit, "nothing/") == []
    assert source.list_files(commit, MANIFEST) == []
    assert len(source.list_files(commit)) == 4


# --- remotes, mirrors, failures ---------------------------------------------------------------


def test_a_down_url_falls_over_to_the_mirror(
    fleet: BareFleetRepo, http: GitHttpServer, make_source: MakeSource, caplog
):
    caplog.set_level(logging.WARNING)
    down = _nowhere()
    source = make_source(down, http.url("fleet.git"))
    head = source.head()
    assert head.remote == http.url("fleet.git")
    source.ensure(head.commit, head.remote)
    assert source.read(head.commit, MANIFEST, max_bytes=1024) == b"name: gw\n"
    assert down in caplog.text  # the operator learns the primary is down


def test_ensure_tries_the_mirrors_when_the_head_remote_fails(
    fleet: BareFleetRepo, srv: Path, daemon: GitDaemon, http: GitHttpServer, make_source, caplog
):
    caplog.set_level(logging.WARNING)
    clone_repo(fleet, srv / "mirror.git")
    source = make_source(daemon.url("fleet.git"), http.url("mirror.git"))
    head = source.head()
    assert head.remote == daemon.url("fleet.git")
    daemon.stop()  # the primary goes down between the query and the fetch
    source.ensure(head.commit, head.remote)
    assert source.contains(head.commit)
    assert f"remote={http.url('mirror.git')}" in caplog.text


def test_all_remotes_down_name_each_remote_with_credentials_redacted(
    tmp_path: Path, make_source: MakeSource, caplog
):
    caplog.set_level(logging.DEBUG)
    port = free_port()
    urls = [
        f"https://deploy:s3cret-token@127.0.0.1:{port}/fleet.git",
        f"http://ghp_tokenAsUser@127.0.0.1:{port}/fleet.git",
        _nowhere(),
        str(tmp_path / "no-such-repo.git"),
    ]
    source = make_source(*urls, timeout=10)
    with pytest.raises(RemotesFailed) as caught:
        source.head()
    failure = caught.value
    assert isinstance(failure, errors.FetchError)
    names = [name for name, _ in failure.failures]
    assert names == [
        f"https://***@127.0.0.1:{port}/fleet.git",
        f"http://***@127.0.0.1:{port}/fleet.git",
        urls[2],
        urls[3],
    ]
    assert all(reason for _, reason in failure.failures)
    text = str(failure) + caplog.text
    assert "s3cret" not in text
    assert "ghp_tokenAsUser" not in text
    assert "deploy" not in text


def test_credentials_stay_out_of_logs_names_and_the_cache_on_success(
    fleet: BareFleetRepo, http: GitHttpServer, make_source: MakeSource, tmp_path: Path, caplog
):
    caplog.set_level(logging.DEBUG)
    url = f"http://deploy:s3cret@127.0.0.1:{http.port}/fleet.git"
    source = make_source(url)
    head = source.head()
    assert head.remote == f"http://***@127.0.0.1:{http.port}/fleet.git"
    assert source.remotes == (head.remote,)
    source.ensure(head.commit, head.remote)
    assert "s3cret" not in caplog.text
    for path in (tmp_path / "state").rglob("*"):
        assert not path.is_file() or b"s3cret" not in path.read_bytes(), path


def test_a_missing_branch_is_an_error_naming_the_remote(fleet: BareFleetRepo, make_source):
    source = make_source(fleet.file_url, branch="release")
    with pytest.raises(RemotesFailed, match=f"branch release not found on {fleet.file_url}"):
        source.head()


def test_a_missing_branch_on_the_primary_falls_to_a_mirror_that_has_it(
    srv: Path, fleet: BareFleetRepo, make_source: MakeSource
):
    other = make_repo(srv / "other.git", branch="develop")
    other.commit({"x": b"y"}, "unrelated")
    source = make_source(other.file_url, fleet.file_url)
    assert source.head() == git_source.RemoteHead(
        commit=fleet.head(),
        remote=fleet.file_url,
        failures=((other.file_url, f"branch main not found on {other.file_url}"),),
    )


def test_a_server_that_never_answers_times_out(make_source: MakeSource):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel, then nothing is ever said
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/fleet.git"
        source = make_source(url, timeout=1)
        started = time.monotonic()
        with pytest.raises(RemotesFailed, match="timed out after 1s"):
            source.head()
    assert time.monotonic() - started < 10


# --- URL and branch checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("fd::17", "remote helpers"),
        ("--upload-pack=touch /tmp/pwned", 'must not start with "-"'),
        ("ftp://example.com/fleet.git", 'unsupported scheme "ftp"'),
        ("https://example.com/fleet.git\nfoo", "control characters"),
        ("", "must not be empty"),
    ],
)
def test_unsafe_or_unsupported_urls_are_refused(url: str, reason: str, tmp_path: Path):
    assert reason in (git_source.url_problem(url) or "")
    with pytest.raises(ValueError, match="source url"):
        GitSource(cache_dir=str(tmp_path / "c"), urls=[url], branch="main")


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/fleet.git",
        "ssh://git@git.example.com/fleet.git",
        "git@git.example.com:acme/fleet.git",
        "git://git.example.com/fleet.git",
        "file:///srv/fleet.git",
        "/srv/fleet",
        "../fleet",
    ],
)
def test_supported_urls_are_accepted(url: str):
    assert git_source.url_problem(url) is None


@pytest.mark.parametrize("branch", ["", "-x", "a..b", "a b", "x.lock", "a/", "@", "a~1", "x@{1}"])
def test_invalid_branch_names_are_refused(branch: str, tmp_path: Path):
    assert git_source.branch_problem(branch)
    with pytest.raises(ValueError, match="source branch"):
        GitSource(cache_dir=str(tmp_path / "c"), urls=["/srv/fleet"], branch=branch)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@host/x", "https://***@host/x"),
        ("https://token@host/x", "https://***@host/x"),
        ("https://u:p@ss/w@rd@host/x", "https://***@host/x"),
        ("ssh://git@host/x", "ssh://git@host/x"),
        ("ssh://git:pw@host/x", "ssh://***@host/x"),
        ("git@host:acme/x", "git@host:acme/x"),
        ("https://host/x", "https://host/x"),
    ],
)
def test_redact_hides_credentials_and_keeps_the_host(url: str, shown: str):
    assert git_source.redact(url) == shown
