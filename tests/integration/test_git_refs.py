"""The in-process branch-head query (`git_refs.HeadQuery`) against real Git servers on loopback:
`git http-backend` (smart HTTP, v2), nginx in front of it (TLS with a test CA, a v0 server made
by dropping the Git-Protocol header, basic auth, a redirect), `git daemon` (git://), a dumb HTTP
server; and hostile servers nginx and git will not play (raw sockets on loopback: silent,
endless, dripping, garbage). The answer must be the one `git ls-remote` gives. No engine needed.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from reconciler.adapters import git_refs
from reconciler.adapters.git_refs import HeadQuery, QueryFailed
from reconciler.adapters.git_source import GitSource
from reconciler.errors import RemotesFailed
from testkit.fleet_repos import GIT_ENV, BareFleetRepo, commit_files, make_repo
from testkit.git_server import GitDaemon, GitDumbHttpServer, GitHttpServer
from testkit.loopback import free_port
from testkit.nginx import Nginx, NginxUnavailable, TestCA

TIMEOUT = 2.0
SLACK = 8.0  # a loaded 2-core CI machine: generous, only a hang fails
SECRET = "s3cret-token"


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    path = tmp_path / "srv"
    path.mkdir()
    return path


@pytest.fixture
def fleet(srv: Path) -> BareFleetRepo:
    """A repo whose other refs look like the branch: a prefix query must pick exactly it."""
    repo = make_repo(srv / "fleet.git")
    repo.commit({"a": b"1"}, "first")
    commit_files(repo.path, {"b": b"2"}, "other", branch="main-old")
    commit_files(repo.path, {"c": b"3"}, "other", branch="mainline")
    other = commit_files(repo.path, {"d": b"4"}, "other", branch="feature/main")
    git_dir = ["git", "--git-dir", str(repo.path)]
    # `git ls-remote URL refs/heads/main` matches this tag too (patterns match ref tails).
    subprocess.run([*git_dir, "update-ref", "refs/tags/x/refs/heads/main", other], check=True)
    subprocess.run([*git_dir, "update-server-info"], check=True, env=GIT_ENV)
    return repo


@pytest.fixture
def http(srv: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(srv) as server:
        yield server


@pytest.fixture
def daemon(srv: Path) -> Iterator[GitDaemon]:
    with GitDaemon(srv) as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "tls")


@pytest.fixture
def front(tmp_path: Path, srv: Path, http: GitHttpServer, tls: TestCA) -> Iterator[Nginx]:
    """nginx over the smart HTTP server, plain and TLS: /git/ as is, /v0/ without the
    Git-Protocol header (the backend then answers protocol v0), /auth/ behind basic auth,
    /moved/ a redirect."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"deploy:{{PLAIN}}{SECRET}\n")
    upstream = f"http://127.0.0.1:{http.port}/"
    rules = f"""
        location /git/ {{ proxy_pass {upstream}; }}
        location /v0/ {{ proxy_set_header Git-Protocol ""; proxy_pass {upstream}; }}
        location /auth/ {{
            auth_basic "fleet"; auth_basic_user_file {htpasswd}; proxy_pass {upstream};
        }}
        location /moved/ {{ return 301 https://user:pw@elsewhere.example/fleet.git; }}
    """
    try:
        server = Nginx(tmp_path / "nginx", srv, tls=tls, extra=rules)
    except NginxUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def _ls_remote(url: str, branch: str = "main", *, env: dict[str, str] | None = None) -> str:
    """What `git ls-remote` prints for the branch (the reference the query must match)."""
    done = subprocess.run(
        ["git", "ls-remote", "--", url, f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
        env={**GIT_ENV, "PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        timeout=30,
        check=True,
    )
    return done.stdout


def _trusting(tls: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca_file))


# --- the same answer as git ls-remote -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["http-v2", "https-v2", "http-v0", "https-v0", "git-v2", "dumb-http", "https-auth"]
)
def test_the_query_answers_what_ls_remote_answers(
    kind: str, fleet: BareFleetRepo, srv: Path, daemon: GitDaemon, front: Nginx, tls: TestCA
):
    auth = f"deploy:{SECRET}@"
    with GitDumbHttpServer(srv) as dumb:
        url = {
            "http-v2": f"{front.http_url}git/fleet.git",
            "https-v2": f"{front.https_url}git/fleet.git",
            "http-v0": f"{front.http_url}v0/fleet.git",
            "https-v0": f"{front.https_url}v0/fleet.git",
            "git-v2": daemon.url("fleet.git"),
            "dumb-http": dumb.url("fleet.git"),
            "https-auth": front.https_url.replace("https://", f"https://{auth}") + "auth/fleet.git",
        }[kind]
        listed = _ls_remote(url, env={"GIT_SSL_CAINFO": str(tls.ca_file)})
        branch_line = next(ln for ln in listed.splitlines() if ln.endswith("\trefs/heads/main"))
        for branch in ("main", "nothing"):
            query = HeadQuery(url, branch, timeout=TIMEOUT, tls=_trusting(tls))
            answers = [query.head(), query.head()]  # the second on the kept connection
            query.close()
            expected = branch_line.partition("\t")[0] if branch == "main" else None
            assert answers == [expected, expected]
    # ls-remote lists the look-alike tag too; GitSource has always kept only the exact ref.
    assert f"{fleet.head()}\trefs/heads/main" in listed.splitlines()
    assert len(listed.splitlines()) == 2


def test_the_v0_front_really_answers_protocol_v0(fleet: BareFleetRepo, front: Nginx):
    """Guards the test above: without this, "v0" could silently be v2."""
    import urllib.request

    request = urllib.request.Request(
        f"{front.http_url}v0/fleet.git/info/refs?service=git-upload-pack",
        headers={"Git-Protocol": "version=2"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    assert b"# service=git-upload-pack" in body
    assert b"version 2" not in body


def test_a_moved_head_is_seen_on_the_kept_connection(fleet: BareFleetRepo, front: Nginx, tls):
    query = HeadQuery(f"{front.https_url}git/fleet.git", "main", tls=_trusting(tls))
    first = query.head()
    moved = fleet.commit({"a": b"2"}, "second")
    assert query.head() == moved != first
    deadline = time.monotonic() + 10
    while len(requests := [ln for ln in front.requests() if "/git/" in ln]) < 3:
        assert time.monotonic() < deadline, requests  # nginx logs just after it answers
        time.sleep(0.05)
    # One probe, then only the ls-refs POSTs, all on one TLS connection.
    assert [line.split()[1] for line in requests] == ["GET", "POST", "POST"]
    assert len({line.split()[3] for line in requests}) == 1
    query.close()


def test_gitsource_reports_a_missing_branch_as_with_ls_remote(
    fleet: BareFleetRepo, http: GitHttpServer, daemon: GitDaemon, tmp_path: Path
):
    urls = [http.url("fleet.git"), daemon.url("fleet.git")]
    failures = []
    for in_process in (True, False):
        source = GitSource(
            cache_dir=tmp_path / f"cache-{in_process}",
            urls=urls,
            branch="release",
            ref_query=in_process,
            timeout=TIMEOUT * 5,
        )
        with pytest.raises(RemotesFailed) as caught:
            source.head()
        failures.append(caught.value.failures)
        source.close()
    assert failures[0] == failures[1]
    assert failures[0] == tuple((url, f"branch release not found on {url}") for url in urls)


def test_gitsource_asks_in_process_and_forks_no_git(
    fleet: BareFleetRepo, http: GitHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = GitSource(cache_dir=tmp_path / "cache", urls=[http.url("fleet.git")], branch="main")
    # A forked git would not be found (the servers in this process still find theirs).
    monkeypatch.setattr(git.Git, "GIT_PYTHON_GIT_EXECUTABLE", str(tmp_path / "no-git-here"))
    assert source.head().commit == fleet.head()
    assert not (tmp_path / "cache").exists()  # an unchanged poll writes nothing
    source.close()


def test_a_proxy_git_would_use_keeps_ls_remote(
    fleet: BareFleetRepo, http: GitHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """git goes through http_proxy; so must the poll, hence ls-remote (the proxy here is
    down: the in-process query, ignoring it, would have succeeded)."""
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    source = GitSource(cache_dir=tmp_path / "c1", urls=[http.url("fleet.git")], branch="main")
    with pytest.raises(RemotesFailed):
        source.head()
    source.close()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    source = GitSource(cache_dir=tmp_path / "c2", urls=[http.url("fleet.git")], branch="main")
    assert source.head().commit == fleet.head()
    source.close()


# --- failures: the reason, never a credential ---------------------------------------------------


def test_wrong_credentials_or_none_are_refused_without_showing_them(
    fleet: BareFleetRepo,
    front: Nginx,
    tls: TestCA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    caplog.set_level(logging.DEBUG)
    base = front.https_url.replace("https://", "https://{}") + "auth/fleet.git"
    urls = [base.format("deploy:wrong-" + SECRET + "@"), base.format("")]
    for url in urls:
        with pytest.raises(QueryFailed, match=r"access denied \(HTTP 401\)") as caught:
            HeadQuery(url, "main", tls=_trusting(tls)).head()
        assert SECRET not in caught.value.reason
    monkeypatch.setenv("GIT_SSL_CAINFO", str(tls.ca_file))  # GitSource trusts what git would
    url = base.format(f"deploy:{SECRET}@")
    source = GitSource(cache_dir=tmp_path / "cache", urls=[url], branch="main")
    head = source.head()
    source.close()
    assert head.commit == fleet.head()
    assert SECRET not in head.remote
    assert SECRET not in caplog.text


def test_an_untrusted_certificate_fails_the_query(front: Nginx):
    query = HeadQuery(f"{front.https_url}git/fleet.git", "main", timeout=TIMEOUT)
    with pytest.raises(QueryFailed, match="CERTIFICATE_VERIFY_FAILED"):
        query.head()


def test_a_missing_repository_is_named(front: Nginx, daemon: GitDaemon, tls: TestCA):
    with pytest.raises(QueryFailed, match=r"repository not found \(HTTP 404\)"):
        HeadQuery(f"{front.https_url}git/nope.git", "main", tls=_trusting(tls)).head()
    with pytest.raises(QueryFailed, match="not exported"):
        HeadQuery(daemon.url("nope.git"), "main").head()


def test_a_redirect_is_refused_and_its_credentials_hidden(front: Nginx, tls: TestCA):
    query = HeadQuery(f"{front.https_url}moved/fleet.git", "main", tls=_trusting(tls))
    with pytest.raises(QueryFailed) as caught:
        query.head()
    assert caught.value.reason == (
        "info/refs: redirected (HTTP 301) to https://***@elsewhere.example/fleet.git; not followed"
    )


# --- hostile servers: bounded in time and size --------------------------------------------------


class Hostile:
    """Answers every connection on 127.0.0.1 per `mode`, in daemon threads."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/fleet.git"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        smart = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n"
        with conn:
            try:
                conn.recv(65536)
                if self.mode == "silent":
                    self.stop.wait(30)
                elif self.mode == "http-endless":
                    conn.sendall(smart + b"Connection: close\r\n\r\n000eversion 2\n")
                    while not self.stop.is_set():
                        conn.sendall(git_refs.pkt(b"x" * 1000) * 64)
                elif self.mode == "http-drip":
                    conn.sendall(smart + b"Content-Length: 1000\r\n\r\n")
                    while not self.stop.wait(0.3):
                        conn.sendall(b"0")
                elif self.mode == "http-huge":
                    conn.sendall(smart + b"Content-Length: 999999999\r\n\r\n")
                    self.stop.wait(30)
                elif self.mode == "http-garbage":
                    conn.sendall(smart + b"Content-Length: 8\r\n\r\nzzzzzzzz")
                elif self.mode == "git-endless":
                    ref = git_refs.pkt(b"0" * 40 + b" refs/heads/" + b"x" * 900 + b"\n")
                    while not self.stop.is_set():
                        conn.sendall(ref * 64)
                elif self.mode == "git-drip":
                    conn.sendall(b"000e")
                    while not self.stop.wait(0.3):
                        conn.sendall(b"v")
                elif self.mode == "git-overlong":
                    conn.sendall(b"fff1" + b"x" * 70000)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    server = Hostile(request.param)
    yield server
    server.close()


@pytest.mark.parametrize(
    ("hostile", "scheme", "reason"),
    [
        ("silent", "http", "timed out after 2s"),
        ("http-endless", "http", "over the limit"),
        ("http-drip", "http", "timed out after 2s"),
        ("http-huge", "http", "is 999999999 bytes, over the limit"),
        ("http-garbage", "http", "malformed pkt-line length"),
        ("silent", "git", "timed out after 2s"),
        ("git-endless", "git", "over the limit"),
        ("git-drip", "git", "timed out after 2s"),
        ("git-overlong", "git", "over Git's limit of 65520"),
    ],
    indirect=["hostile"],
)
def test_a_hostile_server_fails_the_query_within_the_bounds(
    hostile: Hostile, scheme: str, reason: str
):
    query = HeadQuery(hostile.url(scheme), "main", timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(QueryFailed) as caught:
        query.head()
    assert time.monotonic() - started < TIMEOUT + SLACK
    assert reason in caught.value.reason, caught.value.reason
    query.close()


def test_a_down_server_is_a_failure_per_remote_and_the_mirror_answers(
    fleet: BareFleetRepo, http: GitHttpServer, tmp_path: Path
):
    down = f"https://deploy:{SECRET}@127.0.0.1:{free_port()}/fleet.git"
    source = GitSource(
        cache_dir=tmp_path / "cache", urls=[down, http.url("fleet.git")], branch="main"
    )
    head = source.head()
    assert head.commit == fleet.head()
    ((name, reason),) = head.failures
    assert name == down.replace(f"deploy:{SECRET}", "***")
    assert "Connection refused" in reason
    assert SECRET not in reason
    source.close()
