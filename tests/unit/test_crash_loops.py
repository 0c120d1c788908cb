"""crash_loops: a dying container is recreated at once, then with growing waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler import model
from reconciler.core import crash_loops

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
SPEC = model.ContainerSpec(name="web", image="r.example/web:1")
DESIRED = model.DesiredContainer(app="gw", revision="r", spec=SPEC, spec_digest="d" * 64)


def observed(status: str) -> model.ObservedContainer:
    return model.ObservedContainer(
        id="c1",
        name="reconciler_gw_web",
        app="gw",
        container="web",
        revision="r",
        namespace="",
        spec_digest="d" * 64,
        image=SPEC.image,
        status=status,
    )


def plan(status: str = "exited") -> list[model.Action]:
    pull = model.Action(
        kind=model.ActionKind.PULL, app="gw", container="web", reason="", image=SPEC.image
    )
    replace = model.Action(
        kind=model.ActionKind.REPLACE,
        app="gw",
        container="web",
        reason="crashed",
        desired=DESIRED,
        observed=observed(status),
        image=SPEC.image,
    )
    return [pull, replace]


def kinds(actions: list[model.Action]) -> list[str]:
    return [a.kind.value for a in actions]


def test_the_first_recreate_runs_the_next_waits_and_its_pull_goes_too():
    loops = crash_loops.CrashLoops()
    assert kinds(loops.throttle(plan(), [observed("exited")], T0)) == ["pull", "replace"]
    later = T0 + timedelta(seconds=5)
    assert loops.throttle(plan(), [observed("exited")], later) == []
    after_wait = T0 + timedelta(seconds=11)
    assert kinds(loops.throttle(plan(), [observed("exited")], after_wait)) == ["pull", "replace"]
    assert loops.throttle(plan(), [observed("exited")], after_wait + timedelta(seconds=15)) == []


def test_running_briefly_between_crashes_is_not_forgiven_but_running_long_is():
    loops = crash_loops.CrashLoops()
    loops.throttle(plan(), [observed("exited")], T0)
    loops.throttle([], [observed("running")], T0 + timedelta(seconds=3))
    assert loops.throttle(plan(), [observed("exited")], T0 + timedelta(seconds=6)) == []
    loops.throttle([], [observed("running")], T0 + timedelta(seconds=700))
    assert kinds(loops.throttle(plan(), [observed("exited")], T0 + timedelta(seconds=701))) == [
        "pull",
        "replace",
    ]
