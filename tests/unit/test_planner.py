"""The planner: desired vs observed containers -> ordered, explained actions (SPEC 3.2 step 4)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import model
from reconciler.core import planner

Kind = model.ActionKind
NS = "edge"
REV1 = "1" * 64
REV2 = "2" * 64


def want(app, name, *, revision=REV1, order=0, image="reg/gw:1", restart="unless-stopped"):
    spec = model.ContainerSpec(name=name, image=image, restart=restart)
    digest = model.spec_digest(spec, namespace=NS)
    return model.DesiredContainer(app, revision, spec, digest, order)


def seen(d, *, cid=None, status="running", exit_code=0, namespace=NS, **changes):
    o = model.ObservedContainer(
        id=cid or f"id-{d.app}-{d.spec.name}",
        name=f"{d.app}-{d.spec.name}",
        app=d.app,
        container=d.spec.name,
        revision=d.revision,
        namespace=namespace,
        spec_digest=d.spec_digest,
        image=d.spec.image,
        status=status,
        exit_code=exit_code,
    )
    return replace(o, **changes)


def kinds(actions):
    return [(a.kind.value, a.app, a.container or a.image) for a in actions]


def only(actions):
    """The one container action of a plan (pulls aside)."""
    (action,) = [a for a in planner.changes(actions) if a.kind != Kind.PULL]
    return action


def test_identical_spec_yields_an_empty_plan():
    desired = [want("gw", "web"), want("gw", "api", order=1), want("kiosk", "ui")]
    actions = planner.plan(desired, [seen(d) for d in desired], namespace=NS)
    assert planner.changes(actions) == []
    assert kinds(actions) == [("keep", "gw", "web"), ("keep", "gw", "api"), ("keep", "kiosk", "ui")]
    assert all(a.reason for a in actions)


def test_empty_inputs_yield_an_empty_plan():
    assert planner.plan([], [], namespace=NS) == []


def test_changed_image_replaces_the_container():
    old = want("gw", "web", image="reg/gw:1")
    new = want("gw", "web", image="reg/gw:2", revision=REV2)
    actions = planner.plan([new], [seen(old)], namespace=NS)
    assert kinds(actions) == [("pull", "gw", "reg/gw:2"), ("replace", "gw", "web")]
    replace_action = actions[1]
    assert replace_action.reason == (
        f"revision {REV1[:12]} -> {REV2[:12]}, image reg/gw:1 -> reg/gw:2"
    )
    assert replace_action.desired == new
    assert replace_action.observed == seen(old)
    assert replace_action.image == "reg/gw:2"


def test_an_image_pinned_anew_at_the_same_revision_replaces_the_container():
    old = want("gw", "web", image="reg/gw@sha256:" + "a" * 64)
    new = want("gw", "web", image="reg/gw@sha256:" + "b" * 64)
    action = only(planner.plan([new], [seen(old)], namespace=NS))
    assert action.kind == Kind.REPLACE
    assert action.reason.startswith("image reg/gw@sha256:aaa")


def test_a_container_changed_by_hand_is_replaced_as_drift():
    d = want("gw", "web")
    action = only(planner.plan([d], [seen(d, spec_digest="f" * 64)], namespace=NS))
    assert action.kind == Kind.REPLACE
    assert "changed by hand (drift)" in action.reason


def test_container_of_another_namespace_is_never_touched():
    mine = want("gw", "web")
    theirs = want("other", "db")
    observed = [seen(theirs, namespace="lab"), seen(mine, namespace="lab", cid="lab-web")]
    actions = planner.plan([mine], observed, namespace=NS)
    assert kinds(actions) == [("pull", "gw", "reg/gw:1"), ("create", "gw", "web")]
    assert all(a.observed is None for a in actions)


def test_the_default_namespace_ignores_named_ones():
    d = want("gw", "web")
    assert planner.plan([], [seen(d, namespace="lab")], namespace="") == []


def test_a_new_app_pulls_once_per_image_then_creates_in_start_order():
    desired = [
        want("gw", "sidecar", order=2, image="reg/side:1"),
        want("gw", "web", order=0),
        want("gw", "api", order=1),
    ]
    actions = planner.plan(desired, [], namespace=NS)
    assert kinds(actions) == [
        ("pull", "gw", "reg/gw:1"),
        ("pull", "gw", "reg/side:1"),
        ("create", "gw", "web"),
        ("create", "gw", "api"),
        ("create", "gw", "sidecar"),
    ]
    assert actions[0].reason == "needed by gw/web, gw/api"
    assert actions[2].reason == f"app gw at revision {REV1[:12]} is new on this device"


def test_an_app_no_longer_in_the_release_is_removed():
    d = want("gw", "web")
    action = only(planner.plan([], [seen(d)], namespace=NS))
    assert (action.kind, action.reason) == (
        Kind.REMOVE,
        "app gw is no longer in the release for this device",
    )
    assert action.observed == seen(d)


def test_a_container_dropped_from_its_app_is_removed_before_the_app_starts():
    web, old_api = want("gw", "web"), want("gw", "api", order=1)
    worker = want("gw", "worker", order=1, revision=REV2)
    web2 = replace(web, revision=REV2)
    actions = planner.plan([web2, worker], [seen(web), seen(old_api)], namespace=NS)
    assert kinds(planner.changes(actions)) == [
        ("pull", "gw", "reg/gw:1"),
        ("remove", "gw", "api"),
        ("create", "gw", "worker"),
    ]
    assert actions[1].reason == "container api is no longer in app gw"
    assert actions[3].reason == f"container worker is new in revision {REV1[:12]} -> {REV2[:12]}"


def test_a_container_removed_by_hand_is_recreated_as_drift():
    web, api = want("gw", "web"), want("gw", "api", order=1)
    action = only(planner.plan([web, api], [seen(web)], namespace=NS))
    assert action.kind == Kind.CREATE
    assert action.reason == "container api is missing (removed by hand, drift): recreate"


def test_the_applied_revision_words_the_reason_when_nothing_runs():
    d = want("gw", "web", revision=REV2)
    action = only(planner.plan([d], [], namespace=NS, applied={"gw": REV1}))
    assert action.reason == f"container web is new in revision {REV1[:12]} -> {REV2[:12]}"


@pytest.mark.parametrize("status", ["exited", "dead", "created"])
@pytest.mark.parametrize("restart", ["always", "unless-stopped"])
def test_a_stopped_service_is_recreated_as_drift(status, restart):
    d = want("gw", "web", restart=restart)
    actions = planner.plan([d], [seen(d, status=status)], namespace=NS)
    assert kinds(actions) == [("pull", "gw", "reg/gw:1"), ("replace", "gw", "web")]
    assert actions[1].reason == "stopped by hand or crashed (drift): recreate"


@pytest.mark.parametrize("status", ["running", "restarting", "paused"])
def test_a_container_the_engine_is_running_is_kept(status):
    d = want("gw", "web")
    assert planner.changes(planner.plan([d], [seen(d, status=status)], namespace=NS)) == []


@pytest.mark.parametrize("restart", ["no", "on-failure"])
def test_a_finished_one_shot_job_is_kept(restart):
    d = want("gw", "migrate", restart=restart)
    (action,) = planner.plan([d], [seen(d, status="exited", exit_code=0)], namespace=NS)
    assert action.kind == Kind.KEEP
    assert "one-shot job finished" in action.reason


@pytest.mark.parametrize("restart", ["no", "on-failure"])
def test_a_one_shot_job_that_exited_with_an_error_is_recreated(restart):
    d = want("gw", "migrate", restart=restart)
    action = only(planner.plan([d], [seen(d, status="exited", exit_code=137)], namespace=NS))
    assert action.kind == Kind.REPLACE
    assert "exited with code 137" in action.reason


@pytest.mark.parametrize("status", ["created", "dead"])
def test_a_one_shot_job_that_never_ran_or_is_dead_is_recreated(status):
    d = want("gw", "migrate", restart="no")
    action = only(planner.plan([d], [seen(d, status=status)], namespace=NS))
    assert action.kind == Kind.REPLACE


def test_a_duplicate_container_is_removed_and_the_matching_running_one_kept():
    d = want("gw", "web")
    good = seen(d, cid="b-good")
    stale = seen(d, cid="a-stale", spec_digest="0" * 64)
    stopped = seen(d, cid="c-stopped", status="exited", exit_code=1)
    actions = planner.plan([d], [stopped, good, stale], namespace=NS)
    assert [(a.kind, a.observed.id) for a in actions] == [
        (Kind.REMOVE, "a-stale"),
        (Kind.REMOVE, "c-stopped"),
        (Kind.KEEP, "b-good"),
    ]
    assert actions[0].reason == "duplicate of gw-web for container web in app gw"


def test_duplicates_of_a_container_no_longer_desired_are_all_removed():
    d = want("gw", "web")
    actions = planner.plan([], [seen(d, cid="x"), seen(d, cid="y")], namespace=NS)
    assert [(a.kind, a.observed.id) for a in actions] == [(Kind.REMOVE, "x"), (Kind.REMOVE, "y")]


def test_apps_are_planned_in_name_order_after_all_pulls_and_removals():
    zeta, alpha = want("zeta", "a", image="reg/z:1"), want("alpha", "b", image="reg/a:1")
    gone = want("beta", "c")
    actions = planner.plan([zeta, alpha], [seen(gone)], namespace=NS)
    assert kinds(actions) == [
        ("pull", "alpha", "reg/a:1"),
        ("pull", "zeta", "reg/z:1"),
        ("remove", "beta", "c"),
        ("create", "alpha", "b"),
        ("create", "zeta", "a"),
    ]


def test_a_container_desired_twice_is_a_bug():
    with pytest.raises(ValueError, match="desired twice"):
        planner.plan([want("gw", "web"), want("gw", "web")], [], namespace=NS)


# --- properties over random fleets ---------------------------------------------------------

STATUSES = ["running", "restarting", "paused", "created", "exited", "dead", "removing"]


@st.composite
def fleets(draw):
    """Random desired containers and an engine holding some of them, some drifted or foreign."""
    desired = []
    for app in draw(st.lists(st.sampled_from(["gw", "kiosk", "cam"]), unique=True)):
        names = draw(st.lists(st.sampled_from(["web", "api", "db"]), unique=True, max_size=3))
        desired += [
            want(
                app,
                name,
                order=i,
                revision=draw(st.sampled_from([REV1, REV2])),
                image=draw(st.sampled_from(["reg/a:1", "reg/b:1"])),
                restart=draw(st.sampled_from(["no", "on-failure", "always", "unless-stopped"])),
            )
            for i, name in enumerate(names)
        ]
    pool = [*desired, want("old", "web"), want("gw", "gone")]
    observed = []
    for n, d in enumerate(draw(st.lists(st.sampled_from(pool), max_size=8))):
        o = seen(
            d,
            cid=f"c{n}",
            status=draw(st.sampled_from(STATUSES)),
            exit_code=draw(st.sampled_from([0, 1])),
            namespace=draw(st.sampled_from([NS, NS, "lab"])),
        )
        if draw(st.booleans()):
            o = replace(o, spec_digest="e" * 64, revision=REV2)
        observed.append(o)
    return desired, observed


@given(fleets(), st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_input_order(fleet, rng):
    desired, observed = fleet
    shuffled_desired, shuffled_observed = list(desired), list(observed)
    rng.shuffle(shuffled_desired)
    rng.shuffle(shuffled_observed)
    assert planner.plan(shuffled_desired, shuffled_observed, namespace=NS) == planner.plan(
        desired, observed, namespace=NS
    )


@given(fleets())
def test_every_action_has_a_reason_and_only_this_namespace_is_touched(fleet):
    desired, observed = fleet
    actions = planner.plan(desired, observed, namespace=NS)
    assert all(a.reason for a in actions)
    assert all(a.observed.namespace == NS for a in actions if a.observed is not None)
    pulls = [a.image for a in actions if a.kind == Kind.PULL]
    needed = {a.image for a in actions if a.kind in (Kind.CREATE, Kind.REPLACE)}
    assert sorted(pulls) == sorted(needed)
    first_other = next((i for i, a in enumerate(actions) if a.kind != Kind.PULL), len(actions))
    assert all(a.kind == Kind.PULL for a in actions[:first_other])
    assert all(a.kind != Kind.PULL for a in actions[first_other:])


@given(fleets())
def test_every_desired_container_gets_exactly_one_action(fleet):
    desired, observed = fleet
    actions = planner.plan(desired, observed, namespace=NS)
    for_desired = [
        (a.app, a.container) for a in actions if a.kind in (Kind.CREATE, Kind.REPLACE, Kind.KEEP)
    ]
    assert sorted(for_desired) == sorted((d.app, d.spec.name) for d in desired)


@given(fleets())
def test_applying_the_plan_then_planning_again_changes_nothing(fleet):
    desired, observed = fleet
    actions = planner.plan(desired, observed, namespace=NS)
    after = [a.observed for a in actions if a.kind == Kind.KEEP]
    after += [
        seen(a.desired, cid=f"new-{a.container}")
        for a in actions
        if a.kind in (Kind.CREATE, Kind.REPLACE)
    ]
    after += [o for o in observed if o.namespace != NS]
    assert planner.changes(planner.plan(desired, after, namespace=NS)) == []
