"""`health_wait.wait_healthy` against a real engine, plus the thin probes against loopback servers.

Containers are created straight with the docker SDK (labelled with our namespace, so the
`namespace` fixture removes them), ports published on 127.0.0.1 only; the `Target`s carry
hand-made specs that describe them. Short timeouts keep the file well under a minute.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from reconciler import model
from reconciler.adapters.docker_engine import DockerEngine
from reconciler.core import health_rules
from reconciler.core.settings import HealthSettings
from reconciler.device import health_wait
from testkit.loopback import free_port

TIMEOUT = 20.0  # what a rule must decide well within (machines are shared and loaded)
WAITED = 10.0  # the timeout of the tests that wait it out: room to start on a loaded machine
STABLE_FOR = 1.0
# A shell as PID 1 that exits on SIGTERM (see testkit/images.py), serving /www.
SERVE = "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"
# busybox httpd turns a CGI script's "Status:" header into the response status line.
CGI_500 = (
    "#!/bin/sh\n"
    "printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\n'\n"
    "echo broken\n"
)


@pytest.fixture
def engine(docker_host) -> Iterator[DockerEngine]:
    engine = DockerEngine(base_url=docker_host, timeout=30)
    yield engine
    engine.close()


@pytest.fixture
def start(docker_client, namespace):
    """start(image, name, *, restart, port) -> (container id, published host port or None)."""

    def run(image: str, name: str, *, restart: str = "no", port: int | None = None):
        host_port = free_port() if port is None else port
        container = docker_client.containers.run(
            image,
            detach=True,
            name=f"{namespace}-{name}",
            labels={model.LABEL_NAMESPACE: namespace},
            ports={"80/tcp": ("127.0.0.1", host_port)},
            restart_policy={"Name": restart},
        )
        return container.id, host_port

    return run


def target(
    app: str,
    container_id: str,
    *,
    image: str,
    port: int,
    check: model.HealthCheck | None,
    restart: model.RestartPolicy = "no",
    name: str = "web",
) -> health_rules.Target:
    spec = model.ContainerSpec(
        name=name,
        image=image,
        ports=(model.PortMapping(port, 80, host_ip="127.0.0.1"),),
        restart=restart,
        health=check,
    )
    return health_rules.Target(app=app, container=name, container_id=container_id, spec=spec)


def settings(
    *, timeout: float = TIMEOUT, stable_for: float = STABLE_FOR, commands=()
) -> HealthSettings:
    return HealthSettings(timeout=timeout, stable_for=stable_for, commands=tuple(commands))


def http_check(port: int, path: str = "/index.html") -> model.HealthCheck:
    return model.HealthCheck("http", port=port, path=path)


# --- against the engine ------------------------------------------------------------------------


@pytest.mark.docker
def test_healthy_httpd_passes_after_about_stable_for(engine, images, start):
    image = images.httpd("health-ok", "ok")
    cid, port = start(image, "web")
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=http_check(port))], settings()
    )
    assert verdict.healthy, verdict.failed
    assert STABLE_FOR <= verdict.seconds < TIMEOUT  # passed in its window, before the timeout


@pytest.mark.docker
def test_container_that_exits_at_once_with_restart_no_fails_fast(engine, images, start):
    image = images.exits("health-exit1", 1)
    cid, port = start(image, "job")
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=http_check(port))], settings()
    )
    assert verdict.failed == {
        "gw": "web: exited with code 1 and restart policy 'no' will not restart it"
    }
    assert verdict.seconds < TIMEOUT  # decided by the rule, not by the timeout


@pytest.mark.docker
def test_finished_job_without_check_passes_at_once(engine, images, start):
    image = images.exits("health-exit0", 0)
    cid, port = start(image, "job")  # seen running or already exited: either way it passes
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=None)], settings()
    )
    assert verdict.healthy, verdict.failed
    assert verdict.seconds < TIMEOUT  # decided by the rule, not by the timeout


@pytest.fixture
def cgi_500(images) -> str:
    return images.build(
        "health-cgi500",
        cmd=["sh", "-c", f"chmod 755 /www/cgi-bin/fail; {SERVE}"],
        files={"/www/index.html": "ok", "/www/cgi-bin/fail": CGI_500},
    )


@pytest.mark.docker
def test_http_check_answering_500_is_unhealthy_after_three_failed_probes_not_the_timeout(
    engine, cgi_500, start
):
    cid, port = start(cgi_500, "web")
    check = replace(http_check(port, "/cgi-bin/fail"), interval=0.5)
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=cgi_500, port=port, check=check)], settings(timeout=120)
    )
    assert verdict.failed == {
        "gw": f"web: unhealthy: http check GET http://127.0.0.1:{port}/cgi-bin/fail: answered "
        "500; 3 failed probe(s) in a row, 0.5 s apart (failure_threshold 3)"
    }
    assert 1.0 <= verdict.seconds < 15  # three probes, not the 120 s timeout


@pytest.mark.docker
def test_failed_probes_inside_the_start_period_leave_it_to_the_timeout(engine, cgi_500, start):
    cid, port = start(cgi_500, "web")
    check = replace(http_check(port, "/cgi-bin/fail"), interval=0.5, start_period=60.0)
    verdict = health_wait.wait_healthy(
        engine,
        [target("gw", cid, image=cgi_500, port=port, check=check)],
        settings(timeout=WAITED),
    )
    assert verdict.failed["gw"].startswith(
        f"not healthy within {WAITED:g} s: web: http check GET "
        f"http://127.0.0.1:{port}/cgi-bin/fail: answered 500"
    )
    assert WAITED <= verdict.seconds < WAITED + 10  # generous: machines are shared


@pytest.mark.docker
def test_tcp_check_on_a_port_nothing_listens_behind_fails(engine, images, start, engine_kind):
    image = images.sleeper("health-sleeper")
    cid, port = start(image, "web")
    check = model.HealthCheck("tcp", port=port, interval=0.5)
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=check)], settings(timeout=120)
    )
    # Docker's userland proxy accepts, then closes; Podman forwards in the kernel: refused.
    seen = (
        "connection closed at once (nothing listens behind the published port)"
        if engine_kind == "docker"
        else "connection refused"
    )
    assert verdict.failed == {
        "gw": f"web: unhealthy: tcp check 127.0.0.1:{port}: {seen}; 3 failed probe(s) in a "
        "row, 0.5 s apart (failure_threshold 3)"
    }
    assert verdict.seconds < 15  # three probes, not the 120 s timeout


@pytest.mark.docker
def test_tcp_check_on_a_listening_port_passes(engine, images, start):
    image = images.httpd("health-ok", "ok")
    cid, port = start(image, "web")
    check = model.HealthCheck("tcp", port=port)
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=check)], settings()
    )
    assert verdict.healthy, verdict.failed


@pytest.mark.docker
def test_container_that_serves_then_crash_loops_is_caught_by_the_stable_window(
    engine, images, start
):
    # Serves for about a second, then exits 1; restart "always" brings it back each time. The
    # window is longer than the time it serves, so the first passing check must not be enough.
    image = images.build(
        "health-crashloop",
        cmd=["sh", "-c", "httpd -p 80 -h /www; sleep 1; exit 1"],
        files={"/www/index.html": "ok"},
    )
    cid, port = start(image, "web", restart="always")
    verdict = health_wait.wait_healthy(
        engine,
        [target("gw", cid, image=image, port=port, check=http_check(port), restart="always")],
        settings(timeout=30, stable_for=2),
    )
    assert not verdict.healthy
    assert "keeps restarting" in verdict.failed["gw"]
    assert verdict.seconds < 30 / 2  # decided by the restarts, well before the timeout


@pytest.mark.docker
def test_failing_exec_check_fails_and_passing_one_passes(engine, images, start):
    image = images.sleeper("health-sleeper")
    bad_id, bad_port = start(image, "bad")
    good_id, good_port = start(image, "good")
    failing = model.HealthCheck("exec", command=("sh", "-c", "exit 3"), interval=0.5)
    passing = model.HealthCheck("exec", command=("sh", "-c", "test -d /bin"))
    verdict = health_wait.wait_healthy(
        engine,
        [
            target("bad", bad_id, image=image, port=bad_port, check=failing),
            target("good", good_id, image=image, port=good_port, check=passing),
        ],
        settings(),
    )
    assert verdict.failed == {
        "bad": "web: unhealthy: exec check ['sh', '-c', 'exit 3']: exited 3; 3 failed probe(s) "
        "in a row, 0.5 s apart (failure_threshold 3)"
    }


@pytest.mark.docker
def test_docker_healthcheck_that_is_healthy_passes(engine, images, start):
    image = images.build(
        "health-hc-ok",
        cmd=["sh", "-c", SERVE],
        files={"/www/index.html": "ok"},
        healthcheck=["true"],
    )
    cid, port = start(image, "web")
    check = model.HealthCheck("docker")
    # A passing check ends the wait at once: the long timeout only gives a loaded Podman room.
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=check)], settings(timeout=60)
    )
    assert verdict.healthy, verdict.failed


@pytest.mark.docker
def test_docker_healthcheck_reporting_unhealthy_is_a_failed_probe(engine, images, start):
    # The image's HEALTHCHECK runs every 1 s with 2 retries: "unhealthy" after about 2 s.
    image = images.build(
        "health-hc-bad",
        cmd=["sh", "-c", SERVE],
        files={"/www/index.html": "ok"},
        healthcheck=["false"],
    )
    cid, port = start(image, "web")
    check = model.HealthCheck("docker", interval=0.5)
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=check)], settings(timeout=60)
    )
    assert verdict.failed == {
        "gw": "web: unhealthy: docker HEALTHCHECK: reports unhealthy; 3 failed probe(s) in a "
        "row, 0.5 s apart (failure_threshold 3)"
    }
    assert verdict.seconds < 15


@pytest.mark.docker
def test_docker_check_on_an_image_without_healthcheck_fails_fast(engine, images, start):
    image = images.httpd("health-ok", "ok")
    cid, port = start(image, "web")
    check = model.HealthCheck("docker")
    verdict = health_wait.wait_healthy(
        engine, [target("gw", cid, image=image, port=port, check=check)], settings(timeout=60)
    )
    assert verdict.failed == {
        "gw": "web: health is docker: true, but the image defines no HEALTHCHECK"
    }
    assert verdict.seconds < 30  # decided by the rule, not by the 60 s timeout


@pytest.mark.docker
def test_one_failing_app_does_not_hold_up_the_healthy_one(engine, images, start):
    good_image, bad_image = images.httpd("health-ok", "ok"), images.exits("health-exit1", 1)
    good_id, good_port = start(good_image, "good")
    bad_id, bad_port = start(bad_image, "bad")
    verdict = health_wait.wait_healthy(
        engine,
        [
            target("good", good_id, image=good_image, port=good_port, check=http_check(good_port)),
            target("bad", bad_id, image=bad_image, port=bad_port, check=None),
        ],
        settings(),
    )
    assert set(verdict.failed) == {"bad"}
    assert verdict.seconds < TIMEOUT  # the healthy app's stable window, not the timeout


@pytest.mark.docker
def test_failing_host_command_fails_every_app_and_a_passing_one_passes(engine, images, start):
    image = images.httpd("health-ok", "ok")
    (a_id, a_port), (b_id, b_port) = start(image, "a"), start(image, "b")
    targets = [
        target("a", a_id, image=image, port=a_port, check=http_check(a_port)),
        target("b", b_id, image=image, port=b_port, check=None),
    ]
    # Host commands run once the apps are stable: the timeout leaves room to get there on a
    # loaded machine, so the failing command is what the verdict names.
    failing = health_wait.wait_healthy(engine, targets, settings(timeout=15, commands=[("false",)]))
    reason = "not healthy within 15 s: host check ['false'] exited 1"
    assert failing.failed == {"a": reason, "b": reason}
    passing = health_wait.wait_healthy(engine, targets, settings(commands=[("true",)]))
    assert passing.healthy, passing.failed
    assert passing.seconds < TIMEOUT  # passed in its window, not at the timeout


# --- thin probes and host commands, against loopback ---------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        codes = {"/ok": 200, "/moved": 302, "/missing": 404, "/broken": 500}
        self.send_response(codes.get(self.path, 404))
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("path", "ok", "detail"),
    [
        ("/ok", True, "answered 200"),
        ("/moved", True, "answered 302"),
        ("/missing", False, "answered 404"),
        ("/broken", False, "answered 500"),
    ],
)
def test_http_probe_passes_200_to_399_without_following_redirects(http_port, path, ok, detail):
    result = health_wait.probe_http("127.0.0.1", http_port, path, timeout=2)
    assert result == health_rules.ProbeResult(ok, detail)


def test_http_probe_of_a_closed_port_says_refused():
    port = free_port()
    result = health_wait.probe_http("127.0.0.1", port, "/", timeout=1)
    assert result == health_rules.ProbeResult(False, "connection refused")


def test_tcp_probe_passes_a_listener_that_waits_for_the_client(http_port):
    assert health_wait.probe_tcp("127.0.0.1", http_port, timeout=1).ok


def test_tcp_probe_fails_a_listener_that_closes_at_once():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def accept_and_close() -> None:
            connection, _ = listener.accept()
            connection.close()

        thread = threading.Thread(target=accept_and_close)
        thread.start()
        result = health_wait.probe_tcp("127.0.0.1", port, timeout=1)
        thread.join()
    assert not result.ok
    assert result.detail.startswith("connection closed at once")


def test_tcp_probe_of_a_closed_port_says_refused():
    assert health_wait.probe_tcp("127.0.0.1", free_port(), timeout=1) == health_rules.ProbeResult(
        False, "connection refused"
    )


def test_host_commands_report_the_first_failure_with_its_stderr():
    assert health_wait.run_host_commands([("true",)], timeout=5) is None
    commands = [("true",), ("sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 3"), ("false",)]
    assert health_wait.run_host_commands(commands, timeout=5) == (
        "host check ['sh', '-c', \"echo first >&2; echo 'disk full' >&2; exit 3\"] "
        "exited 3: disk full"
    )


def test_host_command_that_cannot_start_is_a_failure_not_a_crash():
    reason = health_wait.run_host_commands([("/nonexistent/check",)], timeout=5)
    assert reason == "host check ['/nonexistent/check'] could not start: No such file or directory"


def test_host_command_over_its_timeout_is_killed_with_its_children():
    started = time.monotonic()
    reason = health_wait.run_host_commands([("sh", "-c", "sleep 30 & sleep 30")], timeout=0.3)
    assert reason == "host check ['sh', '-c', 'sleep 30 & sleep 30'] timed out after 0.3 s"
    assert time.monotonic() - started < 2
