"""The Plan step (SPEC 3.2 step 4): desired containers x observed containers -> ordered actions.

Pure and deterministic: the same inputs in any order give the same plan, and every action says
why in words a person reads in logs and `reconciler plan`. Only containers of this reconciler's
namespace are looked at; everything else in the engine is invisible here, so it can never be
stopped or removed. It must not talk to the engine or decide which apps run (that is `desired`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from reconciler import model

Kind = model.ActionKind

_UP = ("running", "restarting", "paused")  # the engine is on it: nothing to correct
_SERVICE_RESTARTS = ("always", "unless-stopped")
# Which of two containers for one slot to keep: a matching spec first, then the liveliest.
_STATUS_RANK = {"running": 0, "restarting": 1, "paused": 2, "created": 3, "exited": 4, "dead": 5}


def plan(
    desired: Sequence[model.DesiredContainer],
    observed: Sequence[model.ObservedContainer],
    *,
    namespace: str,
    applied: Mapping[str, str] | None = None,
) -> list[model.Action]:
    """Every action that makes `observed` equal `desired`, KEEPs included, in execution order.

    Order: one PULL per distinct image that a CREATE or REPLACE needs (so a failed pull touches
    nothing), then every REMOVE (apps by name), then per app by name its containers in start
    order.
    `applied` (app -> revision last applied) only sharpens the reasons.
    """
    applied = applied or {}
    wanted: dict[tuple[str, str], model.DesiredContainer] = {}
    for container in desired:
        key = (container.app, container.spec.name)
        if key in wanted:
            raise ValueError(
                f"container {container.spec.name} of app {container.app} is desired twice"
            )
        wanted[key] = container
    found: dict[tuple[str, str], list[model.ObservedContainer]] = defaultdict(list)
    for o in observed:
        # Another namespace belongs to another reconciler sharing this engine: never ours.
        if o.namespace == namespace:
            found[(o.app, o.container)].append(o)
    desired_apps = {app for app, _ in wanted}
    running_revision = _running_revisions(found, applied)

    removes: dict[str, list[model.Action]] = defaultdict(list)
    ordered: dict[str, list[tuple[int, model.Action]]] = defaultdict(list)
    for key in sorted(set(wanted) | set(found)):
        app, name = key
        candidates = sorted(found.get(key, []), key=lambda o: o.id)
        d = wanted.get(key)
        if d is None:
            reason = (
                f"container {name} is no longer in app {app}"
                if app in desired_apps
                else f"app {app} is no longer in the release for this device"
            )
            removes[app] += [_action(Kind.REMOVE, o, reason) for o in candidates]
            continue
        if not candidates:
            ordered[app].append((d.order, _create(d, running_revision.get(app))))
            continue
        best, *extra = sorted(candidates, key=lambda o: _rank(o, d))
        ordered[app].append((d.order, _compare(d, best)))
        removes[app] += [
            _action(Kind.REMOVE, o, f"duplicate of {best.name} for container {name} in app {app}")
            for o in sorted(extra, key=lambda o: o.id)
        ]

    # Every removal first: a container that leaves (or an app renamed) frees its host ports
    # and names before anything new claims them.
    actions: list[model.Action] = []
    for app in sorted(removes):
        actions += removes[app]
    for app in sorted(ordered):
        actions += [a for _, a in sorted(ordered[app], key=lambda pair: pair[0])]
    return _pulls(actions) + actions


def changes(actions: Sequence[model.Action]) -> list[model.Action]:
    """The actions that touch the engine: an in-sync device has none."""
    return [a for a in actions if a.kind != Kind.KEEP]


def _compare(d: model.DesiredContainer, o: model.ObservedContainer) -> model.Action:
    """The action for a desired container that has an observed one."""
    if o.spec_digest != d.spec_digest:
        if o.revision != d.revision:
            reason = f"revision {_short(o.revision)} -> {_short(d.revision)}"
            if o.image != d.spec.image:
                reason += f", image {o.image} -> {d.spec.image}"
        elif o.image != d.spec.image:
            # Same manifest, other image: the release pinned another digest for the tag.
            reason = f"image {o.image} -> {d.spec.image} at revision {_short(d.revision)}"
        else:
            reason = "container changed by hand (drift) or its env_file changed: recreate"
        return _action(Kind.REPLACE, o, reason, desired=d)
    if o.status in _UP:
        return _action(Kind.KEEP, o, f"{o.status}, up to date at revision {_short(d.revision)}")
    restart = d.spec.restart
    if o.status in ("exited", "dead", "created") and restart in _SERVICE_RESTARTS:
        return _action(Kind.REPLACE, o, "stopped by hand or crashed (drift): recreate", desired=d)
    if o.status == "exited" and o.exit_code == 0:
        return _action(Kind.KEEP, o, f"one-shot job finished (exit code 0, restart: {restart})")
    if o.status == "exited":
        # Docker restarts on-failure containers by itself, so an exited one was stopped by hand
        # or failed for good; like a service, it is recreated (the reason tells which code).
        reason = f"exited with code {o.exit_code} (stopped by hand or failed, drift): recreate"
        return _action(Kind.REPLACE, o, reason, desired=d)
    if o.status == "created":
        reason = "created but never started (an interrupted apply): recreate"
        return _action(Kind.REPLACE, o, reason, desired=d)
    if o.status == "dead":
        return _action(Kind.REPLACE, o, "dead (drift): recreate", desired=d)
    # e.g. "removing": the engine is already changing it; the next cycle sees the outcome.
    return _action(Kind.KEEP, o, f"{o.status}: left to the engine, checked again next cycle")


def _create(d: model.DesiredContainer, current: str | None) -> model.Action:
    if current is None:
        reason = f"app {d.app} at revision {_short(d.revision)} is new on this device"
    elif current == d.revision:
        reason = f"container {d.spec.name} is missing (removed by hand, drift): recreate"
    else:
        reason = (
            f"container {d.spec.name} is new in revision {_short(current)} -> {_short(d.revision)}"
        )
    return model.Action(
        kind=Kind.CREATE,
        app=d.app,
        container=d.spec.name,
        reason=reason,
        image=d.spec.image,
        desired=d,
    )


def _action(
    kind: model.ActionKind,
    o: model.ObservedContainer,
    reason: str,
    *,
    desired: model.DesiredContainer | None = None,
) -> model.Action:
    return model.Action(
        kind=kind,
        app=o.app,
        container=o.container,
        reason=reason,
        image=desired.spec.image if desired else o.image,
        desired=desired,
        observed=o,
    )


def _pulls(actions: Sequence[model.Action]) -> list[model.Action]:
    """One PULL per image a CREATE or REPLACE needs, in the order they first need it."""
    users: dict[str, list[str]] = {}
    first_app: dict[str, str] = {}
    for a in actions:
        if a.kind in (Kind.CREATE, Kind.REPLACE):
            users.setdefault(a.image, []).append(f"{a.app}/{a.container}")
            first_app.setdefault(a.image, a.app)
    return [
        model.Action(
            kind=Kind.PULL,
            app=first_app[image],
            container="",
            reason=f"needed by {', '.join(names)}",
            image=image,
        )
        for image, names in users.items()
    ]


def _running_revisions(
    found: Mapping[tuple[str, str], Sequence[model.ObservedContainer]],
    applied: Mapping[str, str],
) -> dict[str, str]:
    """App -> the revision it runs now: the applied one, else what its containers say."""
    current = dict(applied)
    for (app, _), containers in sorted(found.items()):
        for o in sorted(containers, key=lambda o: (o.revision, o.id)):
            current.setdefault(app, o.revision)
    return current


def _rank(o: model.ObservedContainer, d: model.DesiredContainer) -> tuple[int, int, str]:
    return (
        int(o.spec_digest != d.spec_digest),
        _STATUS_RANK.get(o.status, len(_STATUS_RANK)),
        o.id,
    )


def _short(revision: str) -> str:
    return revision[:12]
