"""The health wait loop, driven by a fake clock and a scripted in-memory engine (plain data, no
mocks): when it inspects, probes and sleeps, and what verdict it returns. The rules it feeds are
pinned in test_health_rules.py; the probes against real sockets and an engine in
tests/integration/test_health_checks.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from reconciler import errors
from reconciler.core import health_rules
from reconciler.core.settings import HealthSettings
from reconciler.device import health_wait
from reconciler.ports import HealthInfo
from tests.unit.test_health_rules import EXEC, settings, target


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


INFO_RUNNING = HealthInfo("running", None, 0, 0)


@dataclass
class ScriptedEngine:
    """Answers from timelines: per container id, (from_time, answer) pairs in time order; an
    `errors.EngineError` as the answer is raised. Records every call."""

    clock: FakeClock
    inspect: dict[str, list[tuple[float, HealthInfo | errors.EngineError]]]
    exec_codes: dict[str, list[tuple[float, int | errors.EngineError | None]]] = field(
        default_factory=dict
    )
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _at(self, timeline: Sequence[tuple[float, object]]) -> object:
        current = timeline[0][1]
        for start, answer in timeline:
            if start <= self.clock.now:
                current = answer
        if isinstance(current, errors.EngineError):
            raise current
        return current

    def inspect_health(self, container_id: str) -> HealthInfo:
        self.calls.append(("inspect", container_id))
        answer = self._at(self.inspect[container_id])
        assert isinstance(answer, HealthInfo)
        return answer

    def exec_run(self, container_id: str, cmd: Sequence[str]) -> int | None:
        self.calls.append(("exec", container_id))
        answer = self._at(self.exec_codes[container_id])
        assert answer is None or isinstance(answer, int)
        return answer


def wait(
    engine: ScriptedEngine, targets: Sequence[health_rules.Target], settings: HealthSettings
) -> health_rules.Verdict:
    return health_wait.wait_healthy(
        engine, targets, settings, clock=engine.clock, sleep=engine.clock.sleep, poll=0.25
    )


# --- the wait loop, fake clock and scripted engine --------------------------------------------


def test_healthy_app_passes_after_about_stable_for() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(clock, {"id-a-web": [(0, INFO_RUNNING)]})
    verdict = wait(engine, [target("a")], settings(timeout=10, stable_for=2))
    assert verdict.healthy
    assert verdict.failed == {}
    assert verdict.seconds == pytest.approx(2.0)
    assert all(s <= 0.25 for s in clock.sleeps)


def test_container_that_exited_for_good_fails_without_waiting() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(clock, {"id-a-web": [(0, HealthInfo("exited", None, 0, 1))]})
    verdict = wait(engine, [target("a", restart="no")], settings(timeout=60))
    assert not verdict.healthy
    assert verdict.seconds == 0
    assert clock.sleeps == []
    assert verdict.failed["a"].startswith("web: exited with code 1")


def test_failing_exec_check_fails_at_the_timeout_with_its_last_reason() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock, {"id-a-web": [(0, INFO_RUNNING)]}, exec_codes={"id-a-web": [(0, 3)]}
    )
    patient = replace(EXEC, failure_threshold=10)  # the timeout comes first
    verdict = wait(engine, [target("a", check=patient)], settings(timeout=4))
    assert verdict.seconds == pytest.approx(4.0)
    assert verdict.failed == {
        "a": "not healthy within 4 s: web: exec check ['test', '-f', '/ready']: exited 3 "
        "(3 in a row)"
    }


def test_exec_check_that_passes_later_passes_within_the_timeout() -> None:
    clock = FakeClock()
    start = clock.now
    engine = ScriptedEngine(
        clock,
        {"id-a-web": [(0, INFO_RUNNING)]},
        exec_codes={"id-a-web": [(0, 1), (start + 1.5, 0)]},
    )
    verdict = wait(engine, [target("a", check=EXEC)], settings(timeout=10, stable_for=1))
    assert verdict.healthy
    # Probed at 0 (fails) and at 2 (passes: the interval), then stable for 1 s.
    assert verdict.seconds == pytest.approx(3.0)


def test_engine_error_from_exec_is_no_failed_probe_and_not_a_crash() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock,
        {"id-a-web": [(0, INFO_RUNNING)]},
        exec_codes={"id-a-web": [(0, errors.EngineError("exec refused"))]},
    )
    verdict = wait(engine, [target("a", check=EXEC)], settings(timeout=10))
    # The engine could not run it (it may be restarting): the timeout decides, not the count.
    assert verdict.seconds == pytest.approx(10.0)
    assert verdict.failed["a"].startswith("not healthy within 10 s")
    assert "could not run: exec refused" in verdict.failed["a"]


def test_engine_error_on_inspect_waits_and_is_the_reason_at_the_timeout() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(clock, {"id-a-web": [(0, errors.EngineError("engine gone"))]})
    verdict = wait(engine, [target("a")], settings(timeout=2))
    assert verdict.failed == {"a": "not healthy within 2 s: web: cannot inspect: engine gone"}
    assert verdict.seconds == pytest.approx(2.0)


def test_probes_are_not_run_on_a_container_that_is_not_running() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock,
        {"id-a-web": [(0, HealthInfo("restarting", None, 1, 1))]},
        exec_codes={"id-a-web": [(0, 0)]},
    )
    wait(engine, [target("a", check=EXEC)], settings(timeout=1))
    assert ("exec", "id-a-web") not in engine.calls


def test_one_failing_app_does_not_stop_the_others_and_the_wait_ends_when_all_are_decided() -> None:
    clock = FakeClock()
    start = clock.now
    engine = ScriptedEngine(
        clock,
        {
            "id-good-web": [(0, INFO_RUNNING)],
            "id-bad-web": [(0, INFO_RUNNING), (start + 0.5, HealthInfo("exited", None, 0, 2))],
        },
    )
    targets = [target("good"), target("bad", restart="no")]
    verdict = wait(engine, targets, settings(timeout=30, stable_for=3))
    assert set(verdict.failed) == {"bad"}
    assert verdict.seconds == pytest.approx(3.0)


def test_decided_apps_are_no_longer_inspected() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock,
        {"id-good-web": [(0, INFO_RUNNING)], "id-bad-web": [(0, HealthInfo("dead", None, 0, 0))]},
    )
    wait(engine, [target("good"), target("bad")], settings(timeout=30, stable_for=2))
    assert engine.calls.count(("inspect", "id-bad-web")) == 1


def test_crash_loop_is_decided_before_the_timeout() -> None:
    clock = FakeClock()
    start = clock.now
    engine = ScriptedEngine(
        clock,
        {
            "id-a-web": [
                (0, INFO_RUNNING),
                (start + 1.0, HealthInfo("running", None, 1, 1)),
                (start + 2.0, HealthInfo("running", None, 2, 1)),
            ]
        },
    )
    verdict = wait(engine, [target("a")], settings(timeout=60, stable_for=1.5))
    assert "keeps restarting" in verdict.failed["a"]
    assert verdict.seconds == pytest.approx(2.0)


def test_host_command_true_passes_and_false_fails_every_app_at_the_timeout() -> None:
    inspect = {"id-a-web": [(0, INFO_RUNNING)], "id-b-web": [(0, INFO_RUNNING)]}
    targets = [target("a"), target("b")]
    passing = wait(
        ScriptedEngine(FakeClock(), inspect), targets, settings(stable_for=1, commands=[("true",)])
    )
    assert passing.healthy
    failing = wait(
        ScriptedEngine(FakeClock(), inspect),
        targets,
        settings(timeout=3, stable_for=1, commands=[("true",), ("false",)]),
    )
    reason = "not healthy within 3 s: host check ['false'] exited 1"
    assert failing.failed == {"a": reason, "b": reason}
    assert failing.seconds == pytest.approx(3.0)


def test_an_app_failing_its_probes_is_decided_after_three_intervals_not_the_timeout() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock, {"id-a-web": [(0, INFO_RUNNING)]}, exec_codes={"id-a-web": [(0, 1)]}
    )
    verdict = wait(engine, [target("a", check=EXEC)], settings(timeout=120))
    assert verdict.seconds == pytest.approx(4.0)  # probes at 0, 2 and 4 s
    assert verdict.failed["a"].startswith("web: unhealthy: exec check")
    assert engine.calls.count(("exec", "id-a-web")) == 3
    assert engine.calls.count(("inspect", "id-a-web")) == 17  # every 0.25 s meanwhile


def test_an_exec_probe_still_running_at_its_timeout_is_a_failed_probe() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock, {"id-a-web": [(0, INFO_RUNNING)]}, exec_codes={"id-a-web": [(0, None)]}
    )
    verdict = wait(engine, [target("a", check=EXEC)], settings(timeout=120))
    assert verdict.seconds == pytest.approx(4.0)
    assert "timed out (still running)" in verdict.failed["a"]


def test_a_short_interval_wakes_the_loop_before_the_poll() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(
        clock, {"id-a-web": [(0, INFO_RUNNING)]}, exec_codes={"id-a-web": [(0, 1)]}
    )
    fast = replace(EXEC, interval=0.1)
    verdict = wait(engine, [target("a", check=fast)], settings(timeout=120))
    assert verdict.seconds == pytest.approx(0.2)
    assert all(s <= 0.1 + 1e-9 for s in clock.sleeps)


def test_an_engine_that_cannot_be_asked_is_retried_each_poll_not_in_a_busy_loop() -> None:
    clock = FakeClock()
    start = clock.now
    engine = ScriptedEngine(
        clock,
        {"id-a-web": [(0, INFO_RUNNING), (start + 1, errors.EngineError("engine gone"))]},
        exec_codes={"id-a-web": [(0, 0)]},
    )
    wait(engine, [target("a", check=EXEC)], settings(timeout=5, stable_for=100))
    assert min(clock.sleeps) == pytest.approx(0.25)


def test_no_targets_is_healthy_at_once_and_runs_nothing() -> None:
    clock = FakeClock()
    engine = ScriptedEngine(clock, {})
    verdict = wait(engine, [], settings(commands=[("false",)]))
    assert verdict == health_rules.Verdict(failed={}, seconds=0)
    assert engine.calls == []
