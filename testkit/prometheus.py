"""Debian's Prometheus and Pushgateway on loopback, for the fleet-status and gate tests.

`Prometheus` runs /usr/bin/prometheus as the current user (never the system service) with its
own config, data dir and a free 127.0.0.1 port, scraping every second. `Pushgateway` runs
/usr/bin/prometheus-pushgateway likewise, in memory only. Both stop on `stop()` / leaving the
`with` block.

`DeviceExporter` serves, from a loopback HTTP server, the SPEC 3.4 series a device reports for
the fleet view (`reconciler_device_info{device}`, `reconciler_app_info{app,revision,state}`,
`reconciler_hold`, `reconciler_in_maintenance_window`,
`reconciler_last_fetch_success_timestamp_seconds`, `reconciler_applied_info{commit,release}`)
with prometheus_client, or pushes them to a Pushgateway grouped by `device`: it stands in for a
device's metrics endpoint until the daemon's own are scraped in the end-to-end scenario.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, start_http_server

from testkit.loopback import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


class PrometheusUnavailable(RuntimeError):
    """No prometheus binary here (scripts/install.sh installs Debian's)."""


class _Server:
    """A loopback server process with a readiness URL; stopped with its own pid only."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        if not Path(command[0]).exists():
            raise PrometheusUnavailable(f"{command[0]} not found; run scripts/install.sh")
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + 60
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode}: "
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    # Ours, not another worker's that took the free port first (ours then
                    # fails to bind and exits, maybe only after this answer).
                    if answer.status == 200 and _listens(self._proc.pid, self.port):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready within 60 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux /proc)."""
    try:
        owned = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in table:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        # 0100007F: 127.0.0.1 in the kernel's byte order; 0A: LISTEN.
        if local == f"0100007F:{port:04X}" and state == "0A" and f"socket:[{inode}]" in owned:
            return True
    return False


class Prometheus(_Server):
    """Prometheus scraping `jobs` every second: each job is a dict with `job_name`, `targets`
    (host:port list) and optionally `honor_labels`."""

    name = "prometheus"

    def __init__(self, workdir: Path, jobs: Sequence[dict[str, Any]]) -> None:
        super().__init__(workdir)
        self.jobs = list(jobs)

    def _command(self) -> list[str]:
        config = self.workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed, no quoting surprises.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": job["job_name"],
                            "honor_labels": bool(job.get("honor_labels", False)),
                            "scrape_timeout": "900ms",
                            "static_configs": [{"targets": list(job["targets"])}],
                        }
                        for job in self.jobs
                    ],
                }
            ),
            encoding="utf-8",
        )
        return [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"query": promql}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=10) as answer:
            body = json.loads(answer.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(
        self, promql: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60
    ) -> list[dict[str, Any]]:
        """Query until `done(result)`; the last result, or AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql}: still {result} after {timeout} s")
            time.sleep(0.25)


class Pushgateway(_Server):
    name = "pushgateway"

    def _command(self) -> list[str]:
        return [
            PUSHGATEWAY,
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: every
            # gateway on the machine would load the groups every earlier test pushed.
            "--persistence.file=",
            "--log.level=warn",
        ]

    def __enter__(self) -> Pushgateway:
        self.start()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class DeviceExporter:
    """The fleet-view series of one device (SPEC 3.4 names and labels), served on loopback or
    pushed to a Pushgateway with the grouping key `device`.

    `apps` is a list of (app, revision, state); `last_fetch` a unix time (None: never).
    """

    def __init__(
        self,
        device: str,
        apps: Iterable[tuple[str, str, str]] = (),
        *,
        last_fetch: float | None = None,
        hold: bool = False,
        in_window: bool = True,
        release: tuple[str, str] | None = None,
    ) -> None:
        self.device = device
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("reconciler_device_info", "device", ["device"], registry=r).labels(device).set(1)
        app_info = Gauge("reconciler_app_info", "apps", ["app", "revision", "state"], registry=r)
        for app, revision, state in apps:
            app_info.labels(app, revision, state).set(1)
        fetched = Gauge("reconciler_last_fetch_success_timestamp_seconds", "last fetch", registry=r)
        fetched.set(last_fetch if last_fetch is not None else 0)
        Gauge("reconciler_hold", "hold", registry=r).set(1 if hold else 0)
        Gauge("reconciler_in_maintenance_window", "window", registry=r).set(1 if in_window else 0)
        if release is not None:
            applied = Gauge("reconciler_applied_info", "applied", ["commit", "release"], registry=r)
            applied.labels(*release).set(1)
        self._server: Any = None
        self.port: int | None = None

    def serve(self) -> DeviceExporter:
        self.port = free_port()
        self._server, _thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )
        return self

    @property
    def target(self) -> str:
        assert self.port is not None, "serve() first"
        return f"127.0.0.1:{self.port}"

    def push(self, gateway: Pushgateway, *, job: str = "reconciler") -> None:
        push_to_gateway(
            gateway.url, job=job, registry=self.registry, grouping_key={"device": self.device}
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
