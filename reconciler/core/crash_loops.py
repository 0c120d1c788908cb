"""Back-off for containers that keep dying (SPEC 3.2: drift is corrected, but not in a hot loop).

Owns the per-container bookkeeping of recreates: a managed container found stopped with an
unchanged spec is recreated at once the first time, then only after 10 s, 20 s, ... up to 10 min.
It is forgiven once it has run well past its last recreate. Pure apart from one log event: the
cycle hands in the plan, the observed containers and `now`, and gets back the plan to run.
Lives in memory for as long as the daemon does (`reconciler once` starts afresh every time).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from reconciler import logs, model
from reconciler.core import backoff

FORGIVEN_AFTER = 600.0  # seconds up after a recreate before back-off starts over
INITIAL_WAIT = 10.0
MAX_WAIT = 600.0

_log = logging.getLogger("reconciler.cycle")


class CrashLoops:
    """(app, container) -> (recreates so far, time of the last one)."""

    def __init__(self) -> None:
        self._recreates: dict[tuple[str, str], tuple[int, float]] = {}

    def throttle(
        self,
        actions: list[model.Action],
        observed: Sequence[model.ObservedContainer],
        now: datetime,
    ) -> list[model.Action]:
        """`actions` without the recreates still backed off, and without the pulls only they
        needed (else every backed-off cycle would hit the registry and report a change)."""
        # Forgiven only after running well past its last recreate: a container that dies a
        # few seconds after each start is running at some polls and must stay backed off.
        for o in observed:
            key = (o.app, o.container)
            if o.status == "running" and now.timestamp() - self._last(key) > FORGIVEN_AFTER:
                self._recreates.pop(key, None)
        kept = [a for a in actions if not _recreates_stopped(a) or self._allow(a, now)]
        needed = {
            a.image for a in kept if a.kind in (model.ActionKind.CREATE, model.ActionKind.REPLACE)
        }
        return [a for a in kept if a.kind is not model.ActionKind.PULL or a.image in needed]

    def _last(self, key: tuple[str, str]) -> float:
        return self._recreates.get(key, (0, 0.0))[1]

    def _allow(self, action: model.Action, now: datetime) -> bool:
        key = (action.app, action.container)
        attempts, last = self._recreates.get(key, (0, 0.0))
        if attempts:
            wait = backoff.delay(attempts, initial=INITIAL_WAIT, cap=MAX_WAIT, jitter=0.0)
            if now.timestamp() < last + wait:
                logs.event(
                    _log,
                    logging.WARNING,
                    "drift.backoff",
                    app=action.app,
                    container=action.container,
                    retry_in=round(last + wait - now.timestamp(), 1),
                )
                return False
        self._recreates[key] = (attempts + 1, now.timestamp())
        return True


def _recreates_stopped(action: model.Action) -> bool:
    """A REPLACE whose spec did not change: the container died or was stopped (drift)."""
    return (
        action.kind is model.ActionKind.REPLACE
        and action.observed is not None
        and action.desired is not None
        and action.observed.spec_digest == action.desired.spec_digest
    )
