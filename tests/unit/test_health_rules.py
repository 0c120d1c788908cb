"""Health rules: single observations, certain failures, the stable window, per-app decisions,
host checks and the timeout, fed plain observations and times (no engine, no clock); and the
manifest fields that configure a check. The wait loop that feeds them: test_health_wait.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reconciler import errors, model
from reconciler.core import health_rules, manifests
from reconciler.core.health_rules import (
    Assessment,
    ContainerWatch,
    Observation,
    ProbeResult,
    State,
)
from reconciler.core.settings import HealthSettings

# --- helpers ---------------------------------------------------------------------------------


def spec(
    *,
    name: str = "web",
    restart: model.RestartPolicy = "unless-stopped",
    check: model.HealthCheck | None = None,
    ports: tuple[model.PortMapping, ...] = (),
    network_mode: str = "bridge",
) -> model.ContainerSpec:
    return model.ContainerSpec(
        name=name,
        image="img:1",
        restart=restart,
        health=check,
        ports=ports,
        network_mode=network_mode,  # type: ignore[arg-type]
    )


HTTP = model.HealthCheck("http", port=8080, path="/healthz")
EXEC = model.HealthCheck("exec", command=("test", "-f", "/ready"))
DOCKER = model.HealthCheck("docker")
OK = ProbeResult(ok=True, detail="answered 200")
BAD = ProbeResult(ok=False, detail="answered 500")


def running(restarts: int = 0, *, probe: ProbeResult | None = None, docker: str | None = None):
    return Observation("running", restarts, docker_health=docker, probe=probe)


def exited(code: int, restarts: int = 0) -> Observation:
    return Observation("exited", restarts, exit_code=code)


def restarting(restarts: int) -> Observation:
    return Observation("restarting", restarts, exit_code=1)


def watch(stable_for: float = 10.0, **spec_args) -> ContainerWatch:
    return ContainerWatch(container="web", spec=spec(**spec_args), stable_for=stable_for)


def feed(w: ContainerWatch, *timed: tuple[float, Observation]) -> list[State]:
    return [w.observe(seen, at).state for at, seen in timed]


def target(app: str, container: str = "web", **spec_args) -> health_rules.Target:
    return health_rules.Target(
        app=app,
        container=container,
        container_id=f"id-{app}-{container}",
        spec=spec(name=container, **spec_args),
    )


# --- restart policies and addresses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "exit_code", "expected"),
    [
        ("no", 0, False),
        ("no", 1, False),
        ("on-failure", 0, False),
        ("on-failure", 137, True),
        ("always", 0, True),
        ("always", 1, True),
        ("unless-stopped", 0, True),
        ("unless-stopped", 2, True),
    ],
)
def test_restart_policy_decides_whether_an_exited_container_comes_back(
    restart, exit_code, expected
) -> None:
    assert health_rules.will_restart(restart, exit_code) is expected


@pytest.mark.parametrize(
    ("ports", "network_mode", "expected"),
    [
        ((), "bridge", "127.0.0.1"),
        ((model.PortMapping(8080, 80),), "bridge", "127.0.0.1"),
        ((model.PortMapping(8080, 80, host_ip="0.0.0.0"),), "bridge", "127.0.0.1"),
        ((model.PortMapping(8080, 80, host_ip="::"),), "bridge", "127.0.0.1"),
        ((model.PortMapping(8080, 80, host_ip="127.0.0.2"),), "bridge", "127.0.0.2"),
        ((model.PortMapping(9090, 80, host_ip="127.0.0.2"),), "bridge", "127.0.0.1"),
        ((model.PortMapping(8080, 80, "udp", host_ip="127.0.0.3"),), "bridge", "127.0.0.1"),
        (
            (
                model.PortMapping(8080, 80, "udp", host_ip="127.0.0.3"),
                model.PortMapping(8080, 80, host_ip="127.0.0.4"),
            ),
            "bridge",
            "127.0.0.4",
        ),
        ((), "host", "127.0.0.1"),
    ],
)
def test_probe_address_is_the_published_host_ip_when_specific_else_loopback(
    ports, network_mode, expected
) -> None:
    assert health_rules.probe_host(spec(ports=ports, network_mode=network_mode), 8080) == expected


def test_http_url_brackets_ipv6_hosts_and_roots_the_path() -> None:
    assert health_rules.http_url("127.0.0.1", 80, "/x") == "http://127.0.0.1:80/x"
    assert health_rules.http_url("::1", 8080, "healthz") == "http://[::1]:8080/healthz"


def test_check_labels_name_the_kind_and_where_it_probes() -> None:
    ports = (model.PortMapping(8080, 80, host_ip="127.0.0.2"),)
    assert (
        health_rules.check_label(spec(check=HTTP, ports=ports))
        == "http check GET http://127.0.0.2:8080/healthz"
    )
    tcp = model.HealthCheck("tcp", port=8080)
    assert health_rules.check_label(spec(check=tcp)) == "tcp check 127.0.0.1:8080"
    assert health_rules.check_label(spec(check=EXEC)) == "exec check ['test', '-f', '/ready']"
    assert health_rules.check_label(spec(check=DOCKER)) == "docker HEALTHCHECK"
    assert health_rules.check_label(spec()) == "no health check"


# --- one container: what an observation means ------------------------------------------------


def test_running_container_without_check_becomes_stable_after_stable_for() -> None:
    w = watch(stable_for=10)
    assert feed(w, (0, running()), (5, running()), (9.9, running())) == [State.WAITING] * 3
    assert "must stay running without restarts for 10 s (9.9 s so far)" in w.last.reason
    assert w.observe(running(), 10).state is State.STABLE


def test_zero_stable_for_passes_on_the_first_passing_observation() -> None:
    assert feed(watch(stable_for=0), (0, running())) == [State.STABLE]


def test_failing_probe_before_the_first_pass_keeps_waiting_with_what_was_seen() -> None:
    w = watch(stable_for=1, check=HTTP)
    assert feed(w, (0, running(probe=BAD))) == [State.WAITING]
    assert w.last.reason == "http check GET http://127.0.0.1:8080/healthz: answered 500"
    assert feed(w, (50, running(probe=BAD))) == [State.WAITING]
    assert (
        w.last.reason == "http check GET http://127.0.0.1:8080/healthz: answered 500 (2 in a row)"
    )


def test_stable_window_starts_when_the_check_first_passes() -> None:
    w = watch(stable_for=2, check=HTTP)
    states = feed(w, (0, running(probe=BAD)), (3, running(probe=OK)), (4, running(probe=OK)))
    assert states == [State.WAITING] * 3
    assert w.observe(running(probe=OK), 5).state is State.STABLE


def test_a_failing_check_inside_the_window_does_not_restart_it_but_blocks_the_pass() -> None:
    w = watch(stable_for=2, check=HTTP)
    assert feed(w, (0, running(probe=OK)), (2, running(probe=BAD))) == [State.WAITING] * 2
    assert w.last.reason.endswith("answered 500 (it first passed 2.0 s ago)")
    assert w.observe(running(probe=OK), 2.25).state is State.STABLE


def test_one_restart_inside_the_window_restarts_the_window() -> None:
    w = watch(stable_for=2)
    assert feed(w, (0, running(0)), (1.5, running(1)), (3, running(1))) == [State.WAITING] * 3
    assert w.observe(running(1), 3.5).state is State.STABLE


def test_leaving_running_inside_the_window_restarts_the_window() -> None:
    w = watch(stable_for=2)
    paused = Observation("paused", 0)
    assert (
        feed(w, (0, running()), (1, paused), (1.5, running()), (3, running()))
        == [State.WAITING] * 4
    )
    assert w.observe(running(), 3.5).state is State.STABLE


def test_restart_count_rising_by_two_is_a_certain_failure_even_while_running() -> None:
    w = watch(stable_for=1, check=HTTP)
    assert feed(w, (0, running(3, probe=OK)), (1, running(4, probe=OK))) == [State.WAITING] * 2
    assert w.observe(running(5, probe=OK), 2).state is State.FAILED
    assert "restarted 2 times since the health wait began" in w.last.reason


def test_restart_count_is_counted_from_the_first_observation_not_from_zero() -> None:
    w = watch(stable_for=1)
    assert feed(w, (0, running(7)), (1, running(7))) == [State.WAITING, State.STABLE]


def test_restarting_seen_in_two_separate_episodes_is_a_certain_failure() -> None:
    w = watch(stable_for=5)
    states = feed(w, (0, restarting(0)), (0.25, running(0)), (0.5, restarting(0)))
    assert states == [State.WAITING, State.WAITING, State.FAILED]
    assert "seen restarting 2 times" in w.last.reason


def test_one_long_restarting_episode_seen_by_many_polls_is_not_yet_certain() -> None:
    w = watch(stable_for=5)
    states = feed(w, *((t / 4, restarting(1)) for t in range(20)))
    assert states == [State.WAITING] * 20
    assert w.last.reason == "is restarting, not running"


@pytest.mark.parametrize(("restart", "code"), [("no", 1), ("no", 137), ("on-failure", 0)], ids=str)
def test_exit_that_the_restart_policy_will_not_undo_fails_at_once_when_a_check_waits(
    restart, code
) -> None:
    w = watch(restart=restart, check=HTTP)
    assert w.observe(exited(code), 0).state is State.FAILED
    assert f"exited with code {code} and restart policy '{restart}' will not restart it" in (
        w.last.reason
    )


def test_exit_1_with_restart_no_fails_at_once_without_a_check_too() -> None:
    w = watch(restart="no")
    assert w.observe(exited(1), 0).state is State.FAILED


def test_exit_0_with_a_check_says_the_check_can_never_pass() -> None:
    w = watch(restart="no", check=HTTP)
    w.observe(exited(0), 0)
    assert w.last.reason.endswith(
        "so its http check GET http://127.0.0.1:8080/healthz can never pass"
    )


@pytest.mark.parametrize("restart", ["no", "on-failure"])
def test_exit_0_without_a_check_and_no_restart_is_a_finished_job_not_a_failure(restart) -> None:
    w = watch(restart=restart, stable_for=10)
    assert w.observe(exited(0), 0).state is State.STABLE
    assert "one-shot job" in w.last.reason


@pytest.mark.parametrize(
    ("restart", "code"),
    [("always", 0), ("always", 1), ("unless-stopped", 0), ("on-failure", 1)],
)
def test_exit_the_restart_policy_will_undo_keeps_waiting(restart, code) -> None:
    w = watch(restart=restart)
    assert feed(w, (0, exited(code)), (1, exited(code))) == [State.WAITING] * 2
    assert f"waiting for restart policy '{restart}' to start it again" in w.last.reason


def test_dead_container_is_a_certain_failure() -> None:
    w = watch()
    assert w.observe(Observation("dead", 0), 0).state is State.FAILED


def test_created_but_not_started_keeps_waiting() -> None:
    w = watch()
    assert w.observe(Observation("created", 0), 0) == Assessment(
        State.WAITING, "created but not started"
    )


def test_failure_is_final_whatever_is_seen_later() -> None:
    w = watch(restart="no")
    w.observe(exited(2), 0)
    assert feed(w, (1, running()), (20, running())) == [State.FAILED] * 2
    assert w.unreachable("engine down").state is State.FAILED


def test_engine_hiccup_neither_breaks_nor_completes_the_window() -> None:
    w = watch(stable_for=2)
    w.observe(running(), 0)
    assert w.unreachable("cannot inspect: timed out") == Assessment(
        State.WAITING, "cannot inspect: timed out"
    )
    assert w.observe(running(), 2).state is State.STABLE


def test_stable_container_is_re_decided_on_later_observations() -> None:
    w = watch(stable_for=1, check=HTTP)
    assert feed(w, (0, running(probe=OK)), (1, running(probe=OK))) == [
        State.WAITING,
        State.STABLE,
    ]
    assert w.observe(running(probe=BAD), 2).state is State.WAITING


def test_running_but_not_probed_does_not_pass_a_probe_check() -> None:
    w = watch(stable_for=0, check=EXEC)
    assert w.observe(running(), 0) == Assessment(
        State.WAITING, "exec check ['test', '-f', '/ready']: not probed"
    )


# --- docker HEALTHCHECK ------------------------------------------------------------------------


def test_docker_healthy_passes_after_the_stable_window() -> None:
    w = watch(stable_for=1, check=DOCKER)
    states = feed(
        w,
        (0, running(docker="starting")),
        (1, running(docker="healthy")),
        (2, running(docker="healthy")),
    )
    assert states == [State.WAITING, State.WAITING, State.STABLE]


def test_docker_unhealthy_is_a_failed_probe_counted_once_per_interval() -> None:
    w = watch(stable_for=1, check=DOCKER)
    # Inspected every 0.25 s, but read as a probe only every interval (2 s): 0, 2 and 4.
    states = feed(w, *((t / 4, running(docker="unhealthy")) for t in range(17)))
    assert states == [State.WAITING] * 16 + [State.FAILED]
    assert w.last.reason == (
        "unhealthy: docker HEALTHCHECK: reports unhealthy; 3 failed probe(s) in a row, "
        "2 s apart (failure_threshold 3)"
    )


def test_docker_starting_is_no_failed_probe_and_leaves_it_to_the_timeout() -> None:
    w = watch(stable_for=1, check=DOCKER)
    states = feed(w, *((t, running(docker="starting")) for t in range(60)))
    assert states == [State.WAITING] * 60
    assert w.last.reason == "docker HEALTHCHECK reports starting"


def test_docker_check_on_an_image_without_healthcheck_fails_once_seen_twice_in_a_row() -> None:
    w = watch(stable_for=1, check=DOCKER)
    assert feed(w, (0, running()), (0.25, running())) == [State.WAITING, State.FAILED]
    assert w.last.reason == "health is docker: true, but the image defines no HEALTHCHECK"


def test_a_single_missing_health_status_is_forgiven() -> None:
    w = watch(stable_for=1, check=DOCKER)
    states = feed(
        w, (0, running()), (1, running(docker="starting")), (2, running()), (3, running())
    )
    assert states == [State.WAITING, State.WAITING, State.WAITING, State.FAILED]


def test_missing_health_status_while_not_running_is_not_held_against_the_image() -> None:
    w = watch(stable_for=1, check=DOCKER, restart="always")
    states = feed(w, (0, Observation("created", 0)), (1, exited(1)), (2, running(docker="healthy")))
    assert State.FAILED not in states


# --- failed probes in a row: interval, start_period, failure_threshold (SPEC 2.1) --------------


def probing(**timing: object) -> model.HealthCheck:
    return replace(HTTP, **timing)


def test_failure_threshold_failed_probes_in_a_row_are_unhealthy_at_once() -> None:
    w = watch(stable_for=1, check=HTTP)
    assert feed(w, (0, running(probe=BAD)), (2, running(probe=BAD))) == [State.WAITING] * 2
    assert w.observe(running(probe=BAD), 4) == Assessment(
        State.FAILED,
        "unhealthy: http check GET http://127.0.0.1:8080/healthz: answered 500; 3 failed "
        "probe(s) in a row, 2 s apart (failure_threshold 3)",
    )


def test_a_passing_probe_resets_the_count_of_failed_probes() -> None:
    w = watch(stable_for=100, check=HTTP)
    probes = (BAD, BAD, OK, BAD, BAD, OK, BAD, BAD)
    states = feed(w, *((2 * i, running(probe=p)) for i, p in enumerate(probes)))
    assert State.FAILED not in states


def test_failure_threshold_of_one_fails_on_the_first_failed_probe() -> None:
    w = watch(check=probing(failure_threshold=1))
    assert w.observe(running(probe=BAD), 0).state is State.FAILED


def test_failed_probes_inside_the_start_period_do_not_count() -> None:
    w = watch(check=probing(start_period=10.0))
    inside = feed(w, *((t, running(probe=BAD)) for t in (0, 2, 4, 6, 8)))
    assert inside == [State.WAITING] * 5
    after = feed(w, *((t, running(probe=BAD)) for t in (10, 12, 14)))
    assert after == [State.WAITING, State.WAITING, State.FAILED]


def test_the_start_period_counts_from_the_start_of_the_wait_not_the_first_observation() -> None:
    w = ContainerWatch(
        container="web", spec=spec(check=probing(start_period=3.0)), stable_for=1, started=0.0
    )
    states = feed(w, *((t, running(probe=BAD)) for t in (2.5, 4.5, 6.5, 8.5)))
    assert states == [State.WAITING] * 3 + [State.FAILED]


def test_a_probe_falls_due_every_interval_and_at_once_after_a_restart_or_stop() -> None:
    w = watch(check=probing(interval=5.0))
    assert w.probe_due(0)
    w.observe(running(probe=OK), 0)
    assert (w.probe_due(4.9), w.probe_due(5.0)) == (False, True)
    w.observe(running(1), 1)  # restarted: the probe judged the previous run
    assert w.probe_due(1.25)
    w.observe(running(1, probe=OK), 1.25)
    w.observe(exited(1, 1), 2)
    assert w.probe_due(2.25)


def test_the_last_probe_stands_between_probes_and_can_end_the_stable_window() -> None:
    w = watch(stable_for=1, check=HTTP)
    states = feed(w, (0, running(probe=OK)), (0.5, running()), (1.0, running()))
    assert states == [State.WAITING, State.WAITING, State.STABLE]


def test_a_restart_drops_the_last_probe_so_the_old_pass_does_not_count() -> None:
    w = watch(stable_for=1, check=HTTP)
    assert (
        feed(w, (0, running(probe=OK)), (0.5, running(1)), (2, running(1))) == [State.WAITING] * 3
    )
    assert w.last.reason.endswith(": not probed")


def test_a_probe_that_could_not_be_made_neither_passes_nor_counts() -> None:
    w = watch(stable_for=0, check=EXEC)
    unknown = ProbeResult(ok=False, detail="could not run: engine gone", counts=False)
    states = feed(w, *((2 * i, running(probe=unknown)) for i in range(10)))
    assert states == [State.WAITING] * 10
    assert w.observe(running(probe=OK), 20).state is State.STABLE


# --- apps, host checks, timeout ----------------------------------------------------------------


def settings(*, timeout: float = 10, stable_for: float = 1, commands=()) -> HealthSettings:
    return HealthSettings(timeout=timeout, stable_for=stable_for, commands=tuple(commands))


def test_apps_are_decided_independently_and_the_watch_is_done_when_all_are() -> None:
    good, bad = target("good"), target("bad", restart="no")
    w = health_rules.HealthWatch([good, bad], settings())
    w.observe(good, running(), 0)
    w.observe(bad, exited(1), 0)
    assert w.end_round() is False
    assert w.failed == {
        "bad": "web: exited with code 1 and restart policy 'no' will not restart it"
    }
    assert not w.done
    assert w.to_observe() == [good]
    w.observe(good, running(), 1)
    w.end_round()
    assert w.passed == {"good"}
    assert w.done


def test_one_failing_container_fails_its_whole_app_at_once() -> None:
    web, worker = target("gw", "web"), target("gw", "worker", restart="no")
    w = health_rules.HealthWatch([web, worker], settings())
    w.observe(web, running(), 0)
    w.observe(worker, exited(3), 0)
    w.end_round()
    assert w.failed["gw"].startswith("worker: exited with code 3")
    assert w.done


def test_app_passes_only_when_all_its_containers_are_stable_in_the_same_round() -> None:
    web, worker = target("gw", "web"), target("gw", "worker")
    w = health_rules.HealthWatch([web, worker], settings(stable_for=1))
    w.observe(web, running(), 0)
    w.observe(worker, restarting(0), 0)
    w.end_round()
    w.observe(web, running(), 1)
    w.observe(worker, running(1), 1)
    w.end_round()
    assert not w.passed
    w.observe(web, running(), 2)
    w.observe(worker, running(1), 2)
    w.end_round()
    assert w.passed == {"gw"}


def test_host_commands_run_only_once_every_app_is_stable() -> None:
    a, b = target("a"), target("b", check=HTTP)
    w = health_rules.HealthWatch([a, b], settings(stable_for=0, commands=[("true",)]))
    w.observe(a, running(), 0)
    w.observe(b, running(probe=BAD), 0)
    assert w.end_round() is False
    assert not w.passed
    w.observe(a, running(), 1)
    w.observe(b, running(probe=OK), 1)
    assert w.end_round() is True
    w.host_checks(None)
    assert w.passed == {"a", "b"}
    assert w.done


def test_failing_host_command_keeps_every_app_waiting_and_fails_them_all_at_the_timeout() -> None:
    a, b = target("a"), target("b")
    w = health_rules.HealthWatch([a, b], settings(timeout=5, stable_for=0, commands=[("false",)]))
    for t in range(3):
        w.observe(a, running(), t)
        w.observe(b, running(), t)
        assert w.end_round() is True
        w.host_checks("host check ['false'] exited 1")
    assert not w.done
    w.expire(5)
    assert w.failed == {
        "a": "not healthy within 5 s: host check ['false'] exited 1",
        "b": "not healthy within 5 s: host check ['false'] exited 1",
    }


def test_host_commands_are_skipped_once_some_app_failed_on_its_own_checks() -> None:
    good, bad = target("good"), target("bad", restart="no")
    w = health_rules.HealthWatch([good, bad], settings(stable_for=0, commands=[("false",)]))
    w.observe(good, running(), 0)
    w.observe(bad, exited(1), 0)
    assert w.end_round() is False
    assert w.passed == {"good"}
    assert set(w.failed) == {"bad"}


def test_timeout_names_every_container_not_yet_healthy_with_its_last_reason() -> None:
    web, db, cache = target("gw", "web", check=HTTP), target("gw", "db"), target("gw", "cache")
    w = health_rules.HealthWatch([web, db, cache], settings(timeout=3, stable_for=0))
    w.observe(web, running(probe=BAD), 0)
    w.observe(db, Observation("created", 0), 0)
    w.observe(cache, running(), 0)
    w.end_round()
    w.expire(3)
    assert w.failed == {
        "gw": "not healthy within 3 s: "
        "web: http check GET http://127.0.0.1:8080/healthz: answered 500; "
        "db: created but not started"
    }


def test_a_target_from_another_wait_is_refused() -> None:
    w = health_rules.HealthWatch([target("a")], settings())
    with pytest.raises(KeyError, match="not a target"):
        w.observe(target("a", "other"), running(), 0)


# --- the manifest fields (SPEC 2.1 health) -----------------------------------------------------


def parse_health(health_field: object) -> model.HealthCheck | None:
    document = {
        "apiVersion": "reconciler/v1",
        "kind": "App",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {},
            "containers": [
                {"name": "web", "image": "a", "ports": ["8080:80"], "health": health_field}
            ],
        },
    }
    data = json.dumps(document).encode()
    return manifests.parse(data, path="apps/web/app.yaml").containers[0].health


def health_problems(health_field: object) -> list[str]:
    with pytest.raises(errors.ProblemsError) as caught:
        parse_health(health_field)
    return [str(p) for p in caught.value.problems]


def test_probe_timing_defaults_are_2s_0s_and_3() -> None:
    check = parse_health({"http": {"port": 8080, "path": "/healthz"}})
    assert check is not None
    assert (check.interval, check.start_period, check.failure_threshold) == (2.0, 0.0, 3)


def test_probe_timing_is_read_beside_the_check_kind() -> None:
    check = parse_health(
        {"exec": ["true"], "interval": "500ms", "start_period": "1m", "failure_threshold": 5}
    )
    assert check == model.HealthCheck(
        "exec", command=("true",), interval=0.5, start_period=60.0, failure_threshold=5
    )


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"interval": "0s"}, 'health.interval: must be from 100ms to 1h, got "0s"'),
        ({"interval": "50ms"}, 'health.interval: must be from 100ms to 1h, got "50ms"'),
        ({"interval": "2h"}, 'health.interval: must be from 100ms to 1h, got "2h"'),
        ({"interval": "9" * 400 + "d"}, "health.interval: expected a duration like 60s, got"),
        ({"interval": 2}, "health.interval: expected a duration like 60s, got 2"),
        ({"start_period": "2d"}, 'health.start_period: must be from 0s to 24h, got "2d"'),
        ({"start_period": "-1s"}, "health.start_period: expected a duration like 60s"),
        ({"failure_threshold": 0}, "health.failure_threshold: expected an integer 1..1000"),
        ({"failure_threshold": 1001}, "health.failure_threshold: expected an integer 1..1000"),
        ({"failure_threshold": "3"}, "health.failure_threshold: expected an integer 1..1000"),
        ({"failure_threshold": True}, "health.failure_threshold: expected an integer 1..1000"),
        ({"failure_threshold": 3.0}, "health.failure_threshold: expected an integer 1..1000"),
    ],
)
def test_probe_timing_out_of_bounds_is_refused_naming_the_field(timing, message) -> None:
    problems = health_problems({"tcp": {"port": 8080}, **timing})
    assert len(problems) == 1
    assert message in problems[0]
    assert "spec.containers[0]" in problems[0]


def test_probe_timing_without_a_check_kind_is_refused() -> None:
    (problem,) = health_problems({"interval": "2s"})
    assert "expected exactly one of http, tcp, exec, docker, got none" in problem
