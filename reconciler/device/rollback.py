"""Rollback (SPEC 3.2 step 7, and `reconciler rollback`): back to the previous good state.

Shell: every app changed in a failed cycle returns to its previous revision, rebuilt from the
manifests kept in `state_dir` with the images still in the engine (no network); the revisions
that failed are held back, and the rollback is itself health-checked. A rollback that is
unhealthy too is left as it is for a person, never a loop between two bad states.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from reconciler import logs, model
from reconciler.core import desired, state, targets, transitions
from reconciler.device import env_files
from reconciler.device.outcome import CycleOutcome
from reconciler.errors import EngineError, ProblemsError

if TYPE_CHECKING:
    from reconciler.device.converge import Converger

_log = logging.getLogger("reconciler.cycle")


def roll_back(
    converger: Converger,
    current: state.DeviceState,
    aim: state.DeviceState,
    failed: Mapping[str, str],
    *,
    now: datetime,
    cause: str,
) -> CycleOutcome:
    """Return every app changed on the way from `current` to `aim`, holding back the
    revisions in `failed` (app -> why). The other changed apps were only caught up in it:
    they go ahead next cycle."""
    changed = {a.name for a in aim.apps if a not in current.apps}
    reasons = "; ".join(f"{app}: {why}" for app, why in sorted(failed.items()))
    logs.event(_log, logging.ERROR, "rollback.start", cause=cause, failed=reasons)
    reverted = transitions.rolled_back(current, aim, failed, cause=cause, now=now)
    # Saved first: the transaction is closed and the failed revisions held back even when the
    # engine shows nothing to undo (a create that failed left the old container running), and
    # a crash during the rollback leaves a state the next cycle finishes it from.
    converger.store.save(reverted)
    previous = converger.rebuild_all(current)
    outcome = converger.converge(reverted, previous, now=now)
    message = f"{cause}, rolled back: {reasons}"
    if converger.metrics is not None:
        for app in changed:
            converger.metrics.record_rollback(app)
    if outcome.result == "failed":
        message = f"{cause} and the rollback failed too: {reasons}; {outcome.message}"
        _save_last_error(converger, message)
        return CycleOutcome("failed", message)
    back = {t.name for t in previous} & changed
    if back:
        try:
            wanted = _desired_of(converger, [t for t in previous if t.name in back])
        except ProblemsError as exc:  # an env_file vanished: the check cannot be built
            wanted = []
            logs.event(_log, logging.ERROR, "rollback.unchecked", reason=str(exc))
        verdict = converger.check_health(back, wanted)
        if not verdict.healthy:
            bad = "; ".join(f"{a}: {w}" for a, w in sorted(verdict.failed.items()))
            logs.event(
                _log,
                logging.CRITICAL,
                "rollback.unhealthy",
                apps=sorted(verdict.failed),
                reason=bad,
                action="left as it is; the failed new revision stays held back",
            )
            message += f"; the previous state is unhealthy too ({bad}): needs a person"
    _save_last_error(converger, message)
    return CycleOutcome("rolled_back", message)


def by_hand(converger: Converger, current: state.DeviceState, now: datetime) -> CycleOutcome:
    """`reconciler rollback`: every app back to the previous good state, from local state.

    The revisions it leaves are held back ("rolled back by hand"), so the next poll does not
    put them back; a later change of their manifest is applied as usual. Health-checked like
    any change (an unhealthy previous state is rolled back in turn and reported).
    """
    if not current.previous_apps:
        return CycleOutcome("failed", "no previous state to return to")
    targets = converger.rebuild_all(replace(current, apps=current.previous_apps))
    if len(targets) != len(current.previous_apps):
        return CycleOutcome(
            "failed", "the previous state's manifests are missing from state_dir: not touched"
        )
    start, leaving = transitions.by_hand(current, now)
    converger.store.save(start)
    gone = {a.name for a in current.apps} - {a.name for a in current.previous_apps}
    logs.event(_log, logging.WARNING, "rollback.by_hand", apps=sorted(a.name for a in leaving))
    outcome = converger.converge(start, targets, now=now, deselected=gone)
    if outcome.result in ("converged", "unchanged"):
        return CycleOutcome("converged", "returned to the previous state", outcome.actions)
    return outcome


def _save_last_error(converger: Converger, message: str) -> None:
    converger.store.save(replace(converger.store.load(), last_error=message))


def impossible(
    converger: Converger,
    applied: Mapping[str, state.AppliedApp],
    wanted: Sequence[targets.Target],
    blocked: Mapping[str, str],
) -> dict[str, str]:
    """Updates not to start: the images the app's current revision runs (what a rollback
    returns to, with no network) are gone from the engine. The new revision's own images
    are left out: they are pulled before anything is touched."""
    refused: dict[str, str] = {}
    for target in wanted:
        before = applied.get(target.name)
        if target.name in blocked or before is None or before == target.applied():
            continue
        new_refs = {ref for _container, ref in target.images}
        missing = sorted(
            ref
            for ref in {ref for _c, ref in before.images if ref not in new_refs}
            if not _image_local(converger, ref)
        )
        if missing:
            refused[target.name] = (
                f"update to revision {target.manifest.revision[:12]} not started: the image(s) "
                f"a rollback to revision {before.revision[:12]} needs are not in the engine "
                f"({', '.join(missing)}); pull them or make the registry reachable"
            )
    return refused


def _image_local(converger: Converger, ref: str) -> bool:
    """Whether `ref` is in the engine, pulling it back when it is not (deleted by hand)."""
    if converger.engine.image_present(ref):
        return True
    try:
        converger.engine.pull(ref)
    except EngineError as exc:
        logs.event(_log, logging.WARNING, "rollback.image_missing", image=ref, reason=str(exc))
        return False
    logs.event(_log, logging.INFO, "rollback.image_restored", image=ref)
    return True


def _desired_of(
    converger: Converger, wanted: Sequence[targets.Target]
) -> list[model.DesiredContainer]:
    namespace = converger.settings.runtime.namespace
    containers: list[model.DesiredContainer] = []
    for target in wanted:
        extra, _values = env_files.of_manifest(target.manifest)
        containers += desired.containers(
            target.manifest, images=dict(target.images), namespace=namespace, extra=extra
        )
    return containers
