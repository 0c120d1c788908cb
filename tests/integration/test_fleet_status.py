"""`fleet-status` and `rollout gate` against a real Prometheus (Debian's, on loopback, scraping
every second) and a real Pushgateway.

The devices here are loopback HTTP servers serving, with prometheus_client, exactly the SPEC 3.4
series a device reports for the fleet view (`testkit.prometheus.DeviceExporter`): the real
daemons' metrics endpoints take their place in the end-to-end rollout scenario, which comes with
the device side of these metrics. What is real here: Prometheus' scraping, staleness and query
API, the Pushgateway's grouping, the HTTP client, the release read from a Git checkout, and the
console script's exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testkit.cli import run_console_script
from testkit.fleet_repos import FleetRepo
from testkit.loopback import free_port
from testkit.prometheus import DeviceExporter, Prometheus, PrometheusUnavailable, Pushgateway

OLD = "0" * 64
INVENTORY = """\
devices:
  - {name: gw-01, labels: {role: gateway}}
  - {name: gw-02, labels: {role: gateway}}
  - {name: gw-03, labels: {role: gateway}}
  - {name: gw-04, labels: {role: gateway}}
  - {name: gw-05, labels: {role: gateway}}
  - {name: gw-06, labels: {role: gateway}}
  - {name: kiosk-01, labels: {role: kiosk}}
"""


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[FleetRepo, str]:
    """A fleet repo with gw (every gateway) and kiosk, released unsigned; (repo, gw revision)."""
    repo = FleetRepo(tmp_path / "fleet")
    repo.app("gw", selector="{matchLabels: {role: gateway}}")
    repo.app("kiosk", selector="{matchLabels: {role: kiosk}}")
    repo.write("devices/inventory.yaml", INVENTORY)
    repo.commit("apps")
    result = run_console_script("release", "--no-sign", cwd=repo.root)
    assert result.code == 0, result.err
    repo.commit("release 1")
    doc = json.loads(repo.read(".fleet/release.json"))
    return repo, doc["apps"]["apps/gw/app.yaml"]["sha256"]


@pytest.fixture
def exporters() -> Iterator[list[DeviceExporter]]:
    started: list[DeviceExporter] = []
    yield started
    for exporter in started:
        exporter.stop()


def start_prometheus(tmp_path: Path, jobs: list[dict]) -> Prometheus:
    try:
        return Prometheus(tmp_path / "prometheus", jobs).__enter__()
    except PrometheusUnavailable as exc:
        pytest.skip(str(exc))


def test_fleet_status_and_the_gate_read_what_a_real_prometheus_scraped(tmp_path, fleet, exporters):
    repo, new = fleet
    now = time.time()
    devices = [
        DeviceExporter("gw-01", [("gw", new, "running")], last_fetch=now),
        DeviceExporter("gw-02", [("gw", OLD, "running"), ("gw", new, "held_back")], last_fetch=now),
        DeviceExporter(
            "gw-03", [("gw", OLD, "running"), ("gw", new, "pending")], last_fetch=now, hold=True
        ),
        DeviceExporter("gw-04", [("gw", OLD, "paused")], last_fetch=now),
        # Reports, but its last successful fetch is an hour old: stale.
        DeviceExporter("gw-05", [("gw", new, "running")], last_fetch=now - 3600),
        DeviceExporter("kiosk-01", [("kiosk", "k" * 64, "running")], last_fetch=now),
    ]
    exporters += [d.serve() for d in devices]
    prometheus = start_prometheus(
        tmp_path, [{"job_name": "devices", "targets": [d.target for d in devices]}]
    )
    try:
        prometheus.wait_for("count(reconciler_app_info)", lambda r: r and r[0]["value"][1] == "8")
        status = run_console_script(
            "fleet-status",
            "--prometheus",
            prometheus.url,
            "--inventory",
            "devices/inventory.yaml",
            "--json",
            cwd=repo.root,
        )
        assert status.code == 0, status.err
        report = json.loads(status.out)
        gw = next(app for app in report["apps"] if app["name"] == "gw")
        assert gw["revision"] == new
        assert gw["counts"] == {
            "targeted": 6,
            "applied": 2,
            "pending": 1,
            "paused": 1,
            "failed": 1,
            "older": 0,
            "missing": 0,
            "never_seen": 1,
            "stale": 1,
        }
        assert gw["pending_reasons"] == {"hold": 1}
        assert (gw["tried"], gw["failed"]) == (3, 1)
        by_device = {row["device"]: row for row in gw["devices"]}
        assert by_device["gw-02"]["state"] == "failed"
        assert by_device["gw-06"]["state"] == "never_seen"
        assert by_device["gw-05"]["stale"] is True
        assert report["never_seen"] == ["gw-06"]

        text = run_console_script(
            "fleet-status", "--prometheus", prometheus.url, "--max-failures", "0", cwd=repo.root
        )
        assert text.code == 4, text.err
        assert (
            "gw: revision " + new[:12] + " failed on 1 of 3 device(s) that tried it (33%), OVER"
            in text.out
        )
        markdown = run_console_script(
            "fleet-status",
            "--prometheus",
            prometheus.url,
            "--format",
            "markdown",
            "--max-failures",
            "50%",
            cwd=repo.root,
        )
        assert markdown.code == 0, markdown.err
        assert "| app | revision | rollout |" in markdown.out
        assert f"| gw | `{new[:12]}` | no waves (100%) |" in markdown.out

        # The gate: within 50% nothing changes; over 0 failures gw is paused, once.
        args = ("rollout", "gate", "--prometheus", prometheus.url)
        assert run_console_script(*args, "--max-failures", "50%", cwd=repo.root).code == 0
        assert not (repo.root / ".fleet/rollout.yaml").exists()
        gate = run_console_script(*args, "--max-failures", "0", cwd=repo.root)
        assert gate.code == 10, gate.out + gate.err
        assert "gw: failed on 1 of 3 device(s) that tried" in gate.out
        assert b"  gw: {paused: true}\n" in repo.read(".fleet/rollout.yaml")
        again = run_console_script(*args, "--max-failures", "0", cwd=repo.root)
        assert again.code == 0, again.out + again.err
        assert "already paused" in again.out
        # As the scheduled workflow does: commit the file, release; the pause is signed state.
        repo.commit("rollout gate: pause gw")
        assert run_console_script("release", "--no-sign", cwd=repo.root).code == 0
        assert json.loads(repo.read(".fleet/release.json"))["apps"]["apps/gw/app.yaml"]["paused"]

        # A device that stops answering is stale (known from the look-back range), not forgotten.
        devices[0].stop()
        prometheus.wait_for('reconciler_device_info{device="gw-01"}', lambda r: not r)
        gone = run_console_script(
            "fleet-status", "--prometheus", prometheus.url, "--json", cwd=repo.root
        )
        report = json.loads(gone.out)
        assert {d["device"]: d["reporting"] for d in report["devices"]}["gw-01"] is False
        assert "gw-01" in [d["device"] for d in report["devices"] if d["stale"]]
    finally:
        prometheus.stop()


def test_fleet_status_reads_devices_that_push_to_a_pushgateway(tmp_path, fleet):
    repo, new = fleet
    try:
        gateway = Pushgateway(tmp_path / "pushgateway").__enter__()
    except PrometheusUnavailable as exc:
        pytest.skip(str(exc))
    try:
        now = time.time()
        DeviceExporter("gw-01", [("gw", new, "running")], last_fetch=now).push(gateway)
        DeviceExporter("gw-02", [("gw", new, "failed")], last_fetch=now).push(gateway)
        DeviceExporter(
            "gw-03", [("gw", OLD, "running"), ("gw", new, "pending")], last_fetch=now
        ).push(gateway)
        prometheus = start_prometheus(
            tmp_path,
            [{"job_name": "pushgateway", "targets": [gateway.target], "honor_labels": True}],
        )
        try:
            prometheus.wait_for(
                "count(reconciler_app_info)", lambda r: r and r[0]["value"][1] == "4"
            )
            status = run_console_script(
                "fleet-status",
                "--prometheus",
                prometheus.url,
                "--json",
                "--max-failures",
                "0",
                cwd=repo.root,
            )
            assert status.code == 4, status.err
            gw = next(app for app in json.loads(status.out)["apps"] if app["name"] == "gw")
            assert {row["device"]: row["state"] for row in gw["devices"]} == {
                "gw-01": "applied",
                "gw-02": "failed",
                "gw-03": "pending",
            }
            assert gw["counts"]["stale"] == 0
        finally:
            prometheus.stop()
    finally:
        gateway.stop()


def test_an_unreachable_prometheus_is_an_error_not_a_green_status(fleet):
    repo, _ = fleet
    url = f"http://127.0.0.1:{free_port()}"
    status = run_console_script("fleet-status", "--prometheus", url, cwd=repo.root)
    assert status.code == 1
    assert "cannot query Prometheus" in status.err
    gate = run_console_script(
        "rollout", "gate", "--prometheus", url, "--max-failures", "0", cwd=repo.root
    )
    assert gate.code == 1


TEMPLATE = Path(__file__).resolve().parents[2] / "fleet-repo-template"


def test_the_templates_gate_workflow_steps_pause_and_sign_as_ci_would_run_them(
    tmp_path, fleet, exporters
):
    """The `run:` steps of rollout-gate.yml's gate job, run with bash as GitHub's runner runs
    them (same shell flags, GITHUB_* files), against a real Prometheus and a bare `origin`.
    Two stand-ins, for what cannot run here: `gh` is a script recording the commit status it
    would set (GitHub's API), and the called release.yml signs with GitHub's OIDC identity, so
    the test runs its `reconciler release` step unsigned."""
    repo, new = fleet
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    repo.git("remote", "add", "origin", str(origin))
    repo.git("push", "-q", "origin", "HEAD:main")
    now = time.time()
    devices = [
        DeviceExporter("gw-01", [("gw", OLD, "running"), ("gw", new, "held_back")], last_fetch=now),
        DeviceExporter("gw-02", [("gw", new, "running")], last_fetch=now),
    ]
    exporters += [d.serve() for d in devices]
    prometheus = start_prometheus(
        tmp_path, [{"job_name": "devices", "targets": [d.target for d in devices]}]
    )
    try:
        prometheus.wait_for("count(reconciler_app_info)", lambda r: r and r[0]["value"][1] == "3")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        gh_calls = tmp_path / "gh-calls"
        (bin_dir / "gh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {gh_calls}\n')
        (bin_dir / "gh").chmod(0o755)
        summary, output = tmp_path / "summary.md", tmp_path / "output"
        workflow = yaml.safe_load((TEMPLATE / ".github/workflows/rollout-gate.yml").read_text())
        job = workflow["jobs"]["gate"]
        venv_bin = Path(os.environ.get("VIRTUAL_ENV", Path(sys.executable).parent.parent)) / "bin"
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{venv_bin}:{os.environ['PATH']}",
            "PROMETHEUS_URL": prometheus.url,
            "MAX_FAILURES": "0",
            "POLL_INTERVAL": "60s",
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_REPOSITORY": "org/fleet",
            "GH_TOKEN": "unused",
            "RUN_URL": "https://github.com/org/fleet/actions/runs/1",
            "HOME": str(tmp_path),
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        for step in job["steps"]:
            if "run" not in step:
                continue  # actions/checkout and setup-reconciler: the fixture's checkout and venv
            gated = step.get("if") == "steps.gate.outputs.changed == 'true'"
            if gated and "changed=true" not in output.read_text():
                continue
            ran = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                cwd=repo.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert ran.returncode == 0, f"{step['name']}: {ran.stdout}{ran.stderr}"
        release_commit = repo.git("log", "-1", "--format=%H", "--", ".fleet/release.json").strip()
        (call,) = gh_calls.read_text().splitlines()
        assert f"api repos/org/fleet/statuses/{release_commit}" in call
        assert "state=failure" in call and "context=reconciler/fleet-status" in call
        assert "## Fleet status" in summary.read_text()
        assert "### The gate paused" in summary.read_text()
        assert "changed=true" in output.read_text()
        pushed = subprocess.run(
            ["git", "-C", str(origin), "show", "main:.fleet/rollout.yaml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "  gw: {paused: true}\n" in pushed
        # The called release.yml: validate, then release (signed there; unsigned here).
        release_steps = yaml.safe_load((TEMPLATE / ".github/workflows/release.yml").read_text())
        scripts = [s["run"] for s in release_steps["jobs"]["release"]["steps"] if "run" in s]
        assert scripts[0] == "reconciler validate ."
        assert scripts[1].startswith("reconciler release . ")
        assert run_console_script("validate", ".", cwd=repo.root).code == 0
        assert run_console_script("release", ".", "--no-sign", cwd=repo.root).code == 0
        pins = json.loads(repo.read(".fleet/release.json"))["apps"]
        assert pins["apps/gw/app.yaml"]["paused"] is True
    finally:
        prometheus.stop()


class _Answer:
    """A loopback HTTP server answering every request with one canned response, recording the
    requests: for what a real Prometheus never does (a proxy's HTML page, a malformed answer)."""

    def __init__(self, status: int, body: bytes) -> None:
        import http.server
        import threading

        answer = self
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer.requests.append((self.path, headers, self.rfile.read(length)))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (200, b"<html>login</html>", "HTTP 200, not a Prometheus API answer"),
        (400, b'{"status":"error","error":"parse error at char 3"}', "HTTP 400: parse error"),
        (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "instant vector"),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"x":1}]}}',
            "malformed",
        ),
    ],
)
def test_the_prometheus_client_names_what_went_wrong(status, body, words):
    from reconciler.adapters import prometheus_query

    server = _Answer(status, body)
    try:
        client = prometheus_query.Prometheus(f"http://127.0.0.1:{server.port}")
        with pytest.raises(prometheus_query.PrometheusError, match=words):
            client.query("up")
    finally:
        server.close()


def test_the_prometheus_client_sends_url_credentials_as_basic_auth_and_never_shows_them():
    import base64

    from reconciler.adapters import prometheus_query

    body = json.dumps(
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {"a": "b"}, "value": [1, "2"]}]},
        }
    ).encode()
    server = _Answer(200, body)
    try:
        client = prometheus_query.Prometheus(f"http://ops:s3cret@127.0.0.1:{server.port}/prom/")
        (series,) = client.query("up", at=1700000000.0)
        assert (dict(series.labels), series.value) == ({"a": "b"}, 2.0)
        ((path, headers, form),) = server.requests
        assert path == "/prom/api/v1/query"
        assert headers["authorization"] == "Basic " + base64.b64encode(b"ops:s3cret").decode()
        assert form == b"query=up&time=1700000000.000"
        assert "s3cret" not in client.shown
    finally:
        server.close()


def test_a_prometheus_that_scrapes_no_device_gets_a_warning(tmp_path, fleet):
    repo, _ = fleet
    prometheus = start_prometheus(tmp_path, [{"job_name": "nothing", "targets": []}])
    try:
        status = run_console_script("fleet-status", "--prometheus", prometheus.url, cwd=repo.root)
        assert status.code == 0, status.err
        assert "has no reconciler_device_info series" in status.err
        assert "devices: 0 known to Prometheus" in status.out
    finally:
        prometheus.stop()
