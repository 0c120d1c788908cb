"""Apply a plan to the container engine (SPEC 3.2 step 5).

Shell. Every image the plan needs is pulled (or found locally) before any container is touched,
so a failed pull leaves the device exactly as it was. Then removals, creations and replacements
run in the plan's order; a replacement creates the new container before stopping the old one so
the app is down only between stop and start. The first failure stops the run with ApplyError
(what was done so far is reported, the caller decides to revert).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from reconciler import logs, model
from reconciler.errors import ApplyError, EngineError
from reconciler.ports import ApplyEngine

_log = logging.getLogger("reconciler.apply")


@dataclass
class ApplyReport:
    """What the executor did, in order, for logs and the transaction record."""

    pulled: list[str] = field(default_factory=list)
    done: list[model.Action] = field(default_factory=list)


def pull_images(
    engine: ApplyEngine,
    actions: Sequence[model.Action],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Make every image of the plan available; raise EngineError before anything is touched.

    An image pinned by digest that is already present is not pulled again (it cannot have
    changed); a tag is pulled so a moved tag is noticed, but when the registry is unreachable
    and the image is present locally, the local copy is used (rollback must work offline).
    """
    pulled = []
    for action in actions:
        if action.kind is not model.ActionKind.PULL:
            continue
        ref = action.image
        if "@sha256:" in ref and engine.image_present(ref):
            continue
        try:
            engine.pull(ref, progress=progress)
            pulled.append(ref)
        except EngineError:
            if engine.image_present(ref):
                logs.event(_log, logging.WARNING, "pull.offline", image=ref, using="local copy")
                continue
            raise
    return pulled


def apply(
    engine: ApplyEngine,
    actions: Sequence[model.Action],
    *,
    env_files: Mapping[tuple[str, str], Mapping[str, str]],
    progress: Callable[[str], None] | None = None,
) -> ApplyReport:
    """Pull, then run every non-KEEP action in order. `env_files` maps (app, container) to the
    values read from its env_file on the device."""
    report = ApplyReport(pulled=pull_images(engine, actions, progress=progress))
    removed_apps = set()
    for action in actions:
        if action.kind in (model.ActionKind.PULL, model.ActionKind.KEEP):
            continue
        logs.event(
            _log,
            logging.INFO,
            f"apply.{action.kind.value}",
            app=action.app,
            container=action.container,
            reason=action.reason,
        )
        try:
            _run(engine, action, env_files)
        except EngineError as exc:
            raise ApplyError(
                f"{action.kind.value} {action.app}/{action.container}: {exc}",
                app=action.app,
                engine_unavailable=exc.unavailable,
            ) from exc
        if action.kind is model.ActionKind.REMOVE:
            removed_apps.add(action.app)
        report.done.append(action)
    if removed_apps:
        engine.remove_unused_networks(sorted(removed_apps))
    return report


def _run(
    engine: ApplyEngine,
    action: model.Action,
    env_files: Mapping[tuple[str, str], Mapping[str, str]],
) -> None:
    key = (action.app, action.container)
    if action.kind is model.ActionKind.CREATE:
        assert action.desired is not None
        engine.create_and_start(action.desired, env_file_values=env_files.get(key))
    elif action.kind is model.ActionKind.REPLACE:
        assert action.desired is not None and action.observed is not None
        engine.replace(action.observed, action.desired, env_file_values=env_files.get(key))
    elif action.kind is model.ActionKind.REMOVE:
        assert action.observed is not None
        engine.remove_container(action.observed)
