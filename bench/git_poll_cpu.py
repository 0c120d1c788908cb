"""Device and server CPU of one unchanged Git poll: `git ls-remote` against the in-process ref
query (`reconciler.adapters.git_refs`, issue 13 target: <= 5 ms device CPU over HTTPS).

Serves one fleet repo on loopback: smart HTTP (`git http-backend` as CGI under testkit's small
server, in its own process), nginx as the TLS front for HTTPS (test CA), and `git daemon` for
git://. Each way of asking is polled `--polls` times after a warm-up. Printed per unchanged poll:
the median device CPU (this process and the git children it waited for) and wall time, and the
mean server CPU: the git processes the servers ran (http-backend, upload-pack; read from /proc as
the servers' waited-for children) and the front (nginx's TLS, the CGI wrapper's Python), which
a production server (nginx + fcgiwrap, say) would spend differently. /proc counts in clock ticks
(10 ms), hence the mean over all polls.

    .venv/bin/python -m bench.git_poll_cpu [--polls 20] [--server-polls 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.static_poll_cpu import cpu_seconds
from reconciler.adapters.git_refs import HeadQuery
from reconciler.adapters.git_source import GitSource
from testkit.fleet_repos import make_repo, manifest
from testkit.git_server import GitDaemon
from testkit.loopback import free_port
from testkit.nginx import Nginx, TestCA

TICK = 1 / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own, waited-for children) CPU seconds of process `pid` and its live descendants (`git
    daemon` is a `git` whose child `git-daemon` forks the upload-packs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    own, children = (utime + stime) * TICK, (cutime + cstime) * TICK
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            child_own, child_children = proc_cpu(int(child))
        except (FileNotFoundError, ProcessLookupError):
            continue  # it just ended: its parent's count has it
        own += child_own  # a live descendant's own CPU is server work (git-daemon under git)
        children += child_children
    return own, children


def machine() -> str:
    model = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    python = platform.python_version()
    return f"{model}, {os.cpu_count()} cores, load {' '.join(load)}, Python {python}"


def measure(
    poll: Callable[[], object], polls: int, server_polls: int, server_pids: list[int]
) -> tuple[float, float, float, float]:
    """Median device CPU ms and wall ms over `polls`, then mean server git ms and front ms
    over `server_polls` more (the /proc clock ticks need many polls)."""
    for _ in range(3):
        poll()
    cpu, wall = [], []
    for _ in range(polls):
        c, t = cpu_seconds(), time.perf_counter()
        poll()
        cpu.append(cpu_seconds() - c)
        wall.append(time.perf_counter() - t)
    before = [proc_cpu(pid) for pid in server_pids]
    for _ in range(server_polls):
        poll()
    time.sleep(0.2)  # the servers reap their last children
    after = [proc_cpu(pid) for pid in server_pids]
    front = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    git = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return (
        statistics.median(cpu) * 1000,
        statistics.median(wall) * 1000,
        git / server_polls * 1000,
        front / server_polls * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--server-polls", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        repo = make_repo(root / "git" / "fleet.git")
        repo.commit({"apps/web/app.yaml": manifest("web").encode()})
        git_port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; from testkit.git_server import GitHttpServer; "
                f"GitHttpServer({str(root / 'git')!r}, port={git_port}).start(); "
                "time.sleep(1e9)",
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        tls = TestCA(root / "tls")
        os.environ["SSL_CERT_FILE"] = str(tls.ca_file)
        os.environ["GIT_SSL_CAINFO"] = str(tls.ca_file)
        front = f"location /git/ {{ proxy_pass http://127.0.0.1:{git_port}/; }}"
        rows = []
        try:
            with (
                Nginx(root / "nginx", root / "git", tls=tls, extra=front) as nginx,
                GitDaemon(root / "git") as daemon,
            ):
                time.sleep(0.5)  # the git server's first listen
                assert nginx._proc is not None and daemon._proc is not None
                https = f"{nginx.https_url}git/fleet.git"
                http = f"http://127.0.0.1:{git_port}/fleet.git"
                git = daemon.url("fleet.git")
                via_nginx = [nginx._proc.pid, server.pid]
                ways: list[tuple[str, str, bool, list[int]]] = [
                    ("ls-remote https (nginx TLS front)", https, False, via_nginx),
                    ("ls-remote http (smart HTTP)", http, False, [server.pid]),
                    ("ls-remote git://", git, False, [daemon._proc.pid]),
                    ("ref query https (nginx TLS front)", https, True, via_nginx),
                    ("ref query http (smart HTTP)", http, True, [server.pid]),
                    ("ref query git://", git, True, [daemon._proc.pid]),
                ]
                for index, (name, url, in_process, pids) in enumerate(ways):
                    source = GitSource(
                        cache_dir=root / f"cache{index}",
                        urls=[url],
                        branch="main",
                        ref_query=in_process,
                    )
                    assert source.head().commit == repo.head()
                    rows.append((name, *measure(source.head, args.polls, args.server_polls, pids)))
                    source.close()
                # The query alone, as a simulated fleet calls it (no GitSource around it).
                query = HeadQuery(https, "main")
                rows.append(
                    (
                        "HeadQuery.head() https, bare",
                        *measure(query.head, args.polls, args.server_polls, via_nginx),
                    )
                )
                query.close()
        finally:
            server.terminate()
            server.wait()
    print(f"per unchanged Git poll: device CPU and wall (median of {args.polls}),")
    print(
        f"server CPU (mean of {args.server_polls}): git = http-backend/upload-pack,"
        " front = nginx TLS + CGI wrapper"
    )
    print(f"machine: {machine()}")
    for name, cpu_ms, wall_ms, git_ms, front_ms in rows:
        print(
            f"  {name:36s} device cpu {cpu_ms:6.2f} ms  wall {wall_ms:6.2f} ms"
            f"  server git {git_ms:6.2f} ms  front {front_ms:6.2f} ms"
        )


if __name__ == "__main__":
    main()
