"""Health checks decide, and an unhealthy change rolls back by itself (SPEC 3.2 steps 6-7), driven
through `reconciler once`, `run` and `rollback` against the real engine."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import docker
import pytest

from reconciler import model
from testkit.device_lab import (
    DeviceLab,
    app_manifest,
    http_get,
    log_events,
    scrape,
    web,
)
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def refs(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    built = {
        "v1": images.httpd("rb-web-v1", "rb v1"),
        "v2": images.httpd("rb-web-v2", "rb v2"),
        "v3": images.httpd("rb-web-v3", "rb v3"),
        "exits": images.exits("rb-exits", code=3),
        # Serves for a moment, then dies: passes a first check, then restarts (restart: always).
        "flaky": images.build(
            "rb-flaky",
            cmd=["sh", "-c", "httpd -p 80 -h /www; sleep 1; exit 1"],
            files={"/www/index.html": "rb flaky"},
        ),
        "sleeper": images.sleeper("rb-sleeper"),
    }
    out = {}
    for name, local in built.items():
        registry.push(local, f"rb/{name}:1")
        out[name] = f"{registry.address}/rb/{name}:1"
    return out


@pytest.fixture
def lab(tmp_path: Path, docker_host: str, namespace: str) -> DeviceLab:
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.write_config(health={"timeout": "5s", "stable_for": "1s"})
    return lab


def http_check(port: int, path: str = "/index.html") -> dict[str, object]:
    return {"http": {"port": port, "path": path}}


def containers(client: docker.DockerClient, namespace: str) -> list[tuple[str, str, str]]:
    label = {"label": f"{model.LABEL_NAMESPACE}={namespace}"}
    return sorted(
        (c.labels[model.LABEL_APP], c.labels[model.LABEL_REVISION], c.status)
        for c in client.containers.list(all=True, filters=label)
    )


class Applied:
    """The lab with app `web` at v1 applied and healthy; `port` serves it."""

    def __init__(self, lab: DeviceLab, refs: dict[str, str], client: docker.DockerClient):
        self.lab, self.refs, self.client = lab, refs, client
        self.port = lab.free_port()
        lab.publish({"web": app_manifest("web", [self.spec("v1")])})
        run = lab.once()
        assert run.code == 0, run.err
        assert http_get(self.port) == "rb v1"
        self.before = containers(client, lab.namespace)

    def spec(self, image: str, **fields: object) -> dict[str, object]:
        health = fields.pop("health", http_check(self.port))
        return web(self.refs[image], self.port, health=health, **fields)

    def rolled_back(self, *, held: str = "web") -> str:
        run = self.lab.once()
        self.log = run.err
        assert run.code == 3, run.out + run.err
        assert http_get(self.port) == "rb v1"
        assert containers(self.client, self.lab.namespace) == self.before
        status = self.lab.status()
        assert held in [h["app"] for h in status["held_back"]]
        assert status["apps"][0]["revision"] == self.before[0][1]
        return run.out

    def first_health_wait(self) -> float:
        """Seconds the last run's first health wait took, as the run itself logged it (wall
        time of the whole run depends on the machine's load; this does not)."""
        for line in self.log.splitlines():
            if '"health.done"' in line:
                return float(json.loads(line)["seconds"])
        raise AssertionError(f"no health.done event in:\n{self.log}")


@pytest.fixture
def applied(lab: DeviceLab, refs: dict[str, str], docker_client: docker.DockerClient) -> Applied:
    return Applied(lab, refs, docker_client)


def test_an_image_that_exits_at_once_is_rolled_back_without_waiting_out_the_timeout(
    applied: Applied,
):
    applied.lab.publish({"web": app_manifest("web", [applied.spec("exits", restart="no")])})
    out = applied.rolled_back()
    assert applied.first_health_wait() < 15  # certain failure: not the 30 s health timeout
    assert "exited" in out


def test_an_http_check_that_does_not_answer_2xx_or_3xx_is_rolled_back(applied: Applied):
    missing_page = http_check(applied.port, "/no-such-page")  # busybox httpd answers 404
    applied.lab.publish({"web": app_manifest("web", [applied.spec("v2", health=missing_page)])})
    assert "404" in applied.rolled_back()


def test_a_healthz_answering_404_is_rolled_back_after_its_failed_probes_not_the_timeout(
    applied: Applied,
):
    # SPEC 2.1 defaults (interval 2s, failure_threshold 3) against the default 120 s timeout:
    # three 404s in a row decide, about 4 s after the new container starts.
    applied.lab.write_config(health={"timeout": "120s", "stable_for": "1s"})
    healthz = http_check(applied.port, "/healthz")  # busybox httpd: 404 for a missing page
    applied.lab.publish({"web": app_manifest("web", [applied.spec("v2", health=healthz)])})
    out = applied.rolled_back()
    assert applied.first_health_wait() < 30  # generous: the 120 s timeout was not waited out
    assert "answered 404; 3 failed probe(s) in a row" in out
    assert "not healthy within" not in out


def test_a_port_that_never_listens_is_rolled_back(applied: Applied):
    silent = applied.lab.free_port()  # published, but nothing listens on container port 81
    spec = applied.spec("v2", health={"tcp": {"port": silent}})
    spec["ports"] = [*spec["ports"], f"127.0.0.1:{silent}:81"]
    applied.lab.publish({"web": app_manifest("web", [spec])})
    applied.rolled_back()


def test_a_container_that_passes_once_then_crash_loops_is_caught_by_stable_for(
    applied: Applied,
):
    spec = applied.spec("flaky", restart="always", health={"tcp": {"port": applied.port}})
    applied.lab.publish({"web": app_manifest("web", [spec])})
    applied.rolled_back()


def test_a_failing_exec_check_is_rolled_back(applied: Applied):
    spec = applied.spec("v2", health={"exec": ["sh", "-c", "test -f /never-there"]})
    applied.lab.publish({"web": app_manifest("web", [spec])})
    applied.rolled_back()


def test_a_failing_host_command_rolls_back_every_changed_app(applied: Applied):
    applied.lab.write_config(
        health={"timeout": "3s", "stable_for": "1s", "commands": [["sh", "-c", "exit 4"]]}
    )
    applied.lab.publish({"web": app_manifest("web", [applied.spec("v2")])})
    applied.rolled_back()


def test_a_held_back_revision_is_not_retried_and_a_fixed_one_is_applied(applied: Applied):
    applied.lab.publish({"web": app_manifest("web", [applied.spec("exits", restart="no")])})
    applied.rolled_back()

    since = time.time()
    again = applied.lab.once()
    assert again.code == 0, again.err
    # The release is now recorded (web kept at its running revision), nothing else happens.
    assert again.out.startswith(("unchanged", "converged: state recorded")), again.out
    assert containers(applied.client, applied.lab.namespace) == applied.before
    label = f"{model.LABEL_NAMESPACE}={applied.lab.namespace}"
    created = list(
        applied.client.events(
            since=int(since),
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "event": "create", "label": label},
        )
    )
    assert created == []

    applied.lab.publish({"web": app_manifest("web", [applied.spec("v3")])})
    fixed = applied.lab.once()
    assert fixed.code == 0, fixed.err
    assert http_get(applied.port) == "rb v3"
    assert applied.lab.status()["held_back"] == []


def test_in_a_two_app_release_one_failure_reverts_both_and_the_good_one_goes_ahead_next(
    applied: Applied,
):
    lab = applied.lab
    other_port = lab.free_port()
    lab.publish(
        {
            "web": app_manifest("web", [applied.spec("v2")]),
            "side": app_manifest("side", [web(applied.refs["exits"], other_port, restart="no")]),
        }
    )
    out = applied.rolled_back(held="side")
    assert "side" in out
    assert [h["app"] for h in lab.status()["held_back"]] == ["side"]

    run = lab.once()
    assert run.code == 0, run.err
    assert http_get(applied.port) == "rb v2"
    assert [a["name"] for a in lab.status()["apps"]] == ["web"]


def test_a_first_apply_that_fails_returns_to_nothing(
    lab: DeviceLab, refs: dict[str, str], docker_client: docker.DockerClient
):
    lab.publish({"web": app_manifest("web", [web(refs["exits"], lab.free_port(), restart="no")])})
    run = lab.once()
    assert run.code == 3, run.err
    assert containers(docker_client, lab.namespace) == []
    status = lab.status()
    assert status["apps"] == [] and [h["app"] for h in status["held_back"]] == ["web"]


def test_rollback_by_hand_returns_to_the_previous_state_and_holds_back_what_it_left(
    applied: Applied,
):
    lab = applied.lab
    lab.publish({"web": app_manifest("web", [applied.spec("v2")])})
    assert lab.once().code == 0
    assert http_get(applied.port) == "rb v2"

    run = lab.cli("rollback")

    assert run.code == 0, run.err
    assert http_get(applied.port) == "rb v1"
    status = lab.status()
    assert [(h["app"], h["reason"]) for h in status["held_back"]] == [
        ("web", "rolled back by hand")
    ]
    again = lab.once()  # the next poll does not put v2 back
    assert again.code == 0 and http_get(applied.port) == "rb v1"


def test_rollback_by_hand_with_nothing_to_return_to_exits_1(lab: DeviceLab):
    run = lab.cli("rollback")
    assert run.code == 1
    assert "no previous state" in run.out


def test_the_daemon_counts_rollbacks_and_held_back_apps(applied: Applied):
    lab = applied.lab
    lab.metrics_listen = f"127.0.0.1:{lab.free_port()}"
    lab.write_config(health={"timeout": "5s", "stable_for": "1s"})
    lab.publish({"web": app_manifest("web", [applied.spec("exits", restart="no")])})
    process = lab.start_daemon()
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = scrape(lab)
            if 'reconciler_cycles_total{result="rolled_back"} 1.0' in text:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no rolled_back cycle counted:\n" + text)
        assert 'reconciler_rollbacks_total{app="web"} 1.0' in text
        assert 'reconciler_apps{state="held_back"} 1.0' in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    records = log_events(lab.daemon_log.read_text())
    assert any(r["event"] == "rollback.start" for r in records)
    assert http_get(applied.port) == "rb v1"
