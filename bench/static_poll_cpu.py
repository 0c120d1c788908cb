"""Device CPU of one unchanged poll: the static source against the Git source (issue 13 targets).

Serves one fleet on loopback: a published tree from nginx (HTTP and HTTPS with a test CA) and
the same fleet as a Git repo over smart HTTP (`git http-backend`, in its own process so its CPU
is not counted here) with nginx as the TLS front for HTTPS. Then polls each source `--polls`
times after a warm-up and prints the median device CPU (this process and the git children it
waited for) and wall time per unchanged poll: `StaticSource.head()` (a conditional GET, 304,
on one kept-alive connection) and `GitSource.head()` with `git ls-remote` (bench.git_poll_cpu
compares it with the in-process ref query).

    .venv/bin/python -m bench.static_poll_cpu [--polls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.adapters.git_source import GitSource
from reconciler.adapters.static_source import StaticSource
from reconciler.core import published, release
from testkit.fleet_repos import make_repo, manifest
from testkit.loopback import free_port
from testkit.nginx import Nginx, TestCA

MANIFEST = manifest("web").encode()


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(poll: Callable[[], object], polls: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of `polls` polls after three warm-up polls."""
    for _ in range(3):
        poll()
    cpu, wall = [], []
    for _ in range(polls):
        c, t = cpu_seconds(), time.perf_counter()
        poll()
        cpu.append(cpu_seconds() - c)
        wall.append(time.perf_counter() - t)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def write_tree(out: Path) -> None:
    data = json.dumps({"version": 1, "apps": {}}).encode()
    (out / "releases").mkdir(parents=True)
    (out / published.release_path(1)).write_bytes(data)
    latest = published.Latest(version=1, sha256=release.digest(data))
    (out / published.LATEST).write_bytes(published.latest_bytes(latest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tree = root / "public"
        write_tree(tree)
        repo = make_repo(root / "git" / "fleet.git")
        repo.commit({"apps/web/app.yaml": MANIFEST})
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
            with Nginx(root / "nginx", tree, tls=tls, extra=front) as nginx:
                time.sleep(0.5)  # the git server's first listen
                sources: list[tuple[str, StaticSource | GitSource]] = [
                    ("static https (304, kept-alive)", StaticSource(
                        cache_dir=root / "c1", urls=[nginx.https_url])),
                    ("static http (304, kept-alive)", StaticSource(
                        cache_dir=root / "c2", urls=[nginx.http_url])),
                    ("static local directory", StaticSource(
                        cache_dir=root / "c3", urls=[str(tree)])),
                    ("git ls-remote https (nginx TLS front)", GitSource(
                        cache_dir=root / "g1", urls=[f"{nginx.https_url}git/fleet.git"],
                        branch="main", ref_query=False)),
                    ("git ls-remote http (smart HTTP)", GitSource(
                        cache_dir=root / "g2", urls=[f"http://127.0.0.1:{git_port}/fleet.git"],
                        branch="main", ref_query=False)),
                    ("git ls-remote file://", GitSource(
                        cache_dir=root / "g3", urls=[repo.file_url], branch="main")),
                ]  # fmt: skip
                for name, source in sources:
                    rows.append((name, *measure(source.head, args.polls)))
                    source.close()
        finally:
            server.terminate()
            server.wait()
    print(f"device CPU and wall time per unchanged poll, median of {args.polls}:")
    for name, cpu_ms, wall_ms in rows:
        print(f"  {name:40s} cpu {cpu_ms:7.2f} ms   wall {wall_ms:7.2f} ms")


if __name__ == "__main__":
    main()
