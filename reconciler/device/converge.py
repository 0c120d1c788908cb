"""Converge (SPEC 3.2 steps 4-7): make the engine run a set of targets, check, commit.

Shell over the pure planner and state transitions: reads env files, plans against what the
engine shows, records the transaction before the engine is touched, applies, waits for the
changed apps to prove healthy, then commits the new state; a failed apply or check hands over
to `rollback`. Apps that cannot be changed safely (an unreadable env_file, an update whose
rollback would need images the engine lacks) are left exactly as they are and fail the cycle;
the other apps go ahead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from reconciler import logs, model, ports
from reconciler.core import (
    crash_loops,
    desired,
    health_rules,
    manifests,
    planner,
    state,
    targets,
    transitions,
)
from reconciler.core.settings import DeviceSettings
from reconciler.device import env_files, executor, health_wait, rollback, state_store
from reconciler.device.outcome import CycleOutcome
from reconciler.errors import ApplyError, EngineError, ProblemsError

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

_log = logging.getLogger("reconciler.cycle")

SETTLE_SECONDS = 30.0  # longest wait for removals the engine is still doing


@dataclass
class Converger:
    """The device's engine and state_dir, and what one cycle learns while converging."""

    settings: DeviceSettings
    engine: ports.ContainerEngine
    store: state_store.StateStore
    metrics: Metrics | None = None
    crash_loops: crash_loops.CrashLoops = field(default_factory=crash_loops.CrashLoops)
    clock: ports.Clock | None = None  # None: the system's (time.monotonic, time.sleep)
    failed_apps: set[str] = field(default_factory=set)  # blocked or failed here this cycle

    def converge(
        self,
        current: state.DeviceState,
        wanted: Sequence[targets.Target],
        *,
        now: datetime,
        content: targets.ReleaseContent | None = None,
        source: transitions.ReleaseRecord | None = None,
        deselected: set[str] | None = None,
        guard_rollback: bool = False,
    ) -> CycleOutcome:
        """Make the engine run `wanted`; `source` is recorded with it when it came from a
        release (`content`, whose dropped apps are pruned)."""
        env, blocked = env_files.read_all(wanted)
        applied = {a.name: a for a in current.apps}
        try:
            if guard_rollback:
                blocked.update(rollback.impossible(self, applied, wanted, blocked))
        except EngineError as exc:
            return CycleOutcome("failed", f"could not prepare the apply: {exc}")
        for app, why in sorted(blocked.items()):
            self.failed_apps.add(app)
            logs.event(_log, logging.ERROR, "apply.blocked", app=app, reason=why)
        usable = [t for t in wanted if t.name not in blocked]
        prunable = (content.dropped(current) if content is not None else set()) | (
            deselected or set()
        )
        outcome = self._apply(
            current,
            usable,
            now=now,
            env=env,
            blocked=set(blocked),
            prunable=prunable,
            source=source,
        )
        return _with_blocked(outcome, blocked)

    def _apply(
        self,
        current: state.DeviceState,
        wanted: Sequence[targets.Target],
        *,
        now: datetime,
        env: Mapping[str, env_files.EnvFiles],
        blocked: set[str],
        prunable: set[str],
        source: transitions.ReleaseRecord | None,
    ) -> CycleOutcome:
        namespace = self.settings.runtime.namespace
        containers: list[model.DesiredContainer] = []
        values: dict[tuple[str, str], dict[str, str]] = {}
        try:
            for target in wanted:
                extra, found = env[target.name]
                values.update({(target.name, c): v for c, v in found.items()})
                containers += desired.containers(
                    target.manifest, images=dict(target.images), namespace=namespace, extra=extra
                )
            observed = self._settled_containers()
        except (EngineError, OSError) as exc:
            return CycleOutcome("failed", f"could not prepare the apply: {exc}")
        frozen = targets.frozen_apps(current, wanted, prunable=prunable, blocked=blocked)
        observed = [o for o in observed if o.app not in frozen]
        applied_revisions = {a.name: a.revision for a in current.apps}
        actions = planner.plan(containers, observed, namespace=namespace, applied=applied_revisions)
        actions = self.crash_loops.throttle(actions, observed, now)
        changes = container_changes(actions)
        kept = [a for a in current.apps if a.name in blocked]
        aim = transitions.moved(current, [*(t.applied() for t in wanted), *kept], source)
        changed_apps = transitions.changed_apps(current.apps, aim.apps)
        if not changes and not changed_apps:
            if aim != current:
                self.commit(current, aim, wanted, now)
                return CycleOutcome("converged", "state recorded; containers already match")
            return CycleOutcome("unchanged", "nothing to do", tuple(actions))
        for target in wanted:
            self.store.put_manifest(target.manifest.revision, target.data)
        self.store.save(transitions.begun(current, aim, now))
        try:
            executor.apply(self.engine, actions, env_files=values)
        except EngineError as exc:
            self.store.save(current)
            return CycleOutcome("failed", f"nothing was changed: {exc}", tuple(actions))
        except ApplyError as exc:
            failed = {exc.app: str(exc)} if exc.app in changed_apps else {}
            reasons = failed or dict.fromkeys(changed_apps, str(exc))
            return rollback.roll_back(self, current, aim, reasons, now=now, cause="apply failed")
        if changed_apps:
            verdict = self.check_health(changed_apps, containers)
            if not verdict.healthy:
                return rollback.roll_back(
                    self, current, aim, verdict.failed, now=now, cause="health check failed"
                )
        self._count_drift(actions, applied_revisions)
        self.commit(current, aim, wanted, now)
        return CycleOutcome("converged", f"{len(changes)} change(s) applied", tuple(actions))

    def commit(
        self,
        current: state.DeviceState,
        aim: state.DeviceState,
        wanted: Sequence[targets.Target],
        now: datetime,
    ) -> None:
        for target in wanted:
            self.store.put_manifest(target.manifest.revision, target.data)
        final = transitions.committed(current, aim, now)
        self.store.save(final)
        self.store.prune_manifests(transitions.kept_revisions(final))
        if self.metrics is not None and final.commit and final.release_version is not None:
            self.metrics.set_applied(final.commit, final.release_version)

    def rebuild(self, app: state.AppliedApp) -> targets.Target | None:
        """An applied app from the manifest kept in `state_dir` (no network)."""
        data = self.store.get_manifest(app.revision)
        if data is None:
            logs.event(
                _log,
                logging.ERROR,
                "state.manifest_missing",
                app=app.name,
                revision=app.revision[:12],
                detail="its containers are left as they are",
            )
            return None
        try:
            manifest = manifests.parse(data, path=app.path)
        except ProblemsError:
            return None
        return targets.Target(manifest, data, app.images)

    def rebuild_all(self, current: state.DeviceState) -> list[targets.Target]:
        return [t for t in map(self.rebuild, current.apps) if t is not None]

    def check_health(
        self, apps: set[str], wanted: Sequence[model.DesiredContainer]
    ) -> health_rules.Verdict:
        """Wait for the changed apps' containers to pass their checks (SPEC 3.2 step 6)."""
        try:
            observed = self.engine.list_managed()
        except EngineError as exc:
            return health_rules.Verdict(failed=dict.fromkeys(apps, f"engine: {exc}"), seconds=0.0)
        by_digest = {(o.app, o.container, o.spec_digest): o for o in observed}
        checked: list[health_rules.Target] = []
        missing: dict[str, str] = {}
        for d in wanted:
            if d.app not in apps:
                continue
            found = by_digest.get((d.app, d.spec.name, d.spec_digest))
            if found is None:
                missing.setdefault(d.app, f"container {d.spec.name} is missing after the apply")
                continue
            checked.append(health_rules.Target(d.app, d.spec.name, found.id, d.spec))
        logs.event(_log, logging.INFO, "health.wait", apps=sorted(apps))
        monotonic, sleep = self._timing()
        verdict = health_wait.wait_healthy(
            self.engine, checked, self.settings.health, clock=monotonic, sleep=sleep
        )
        failed = {**verdict.failed, **missing}
        level = logging.INFO if not failed else logging.ERROR
        logs.event(
            _log,
            level,
            "health.done",
            healthy=not failed,
            seconds=round(verdict.seconds, 2),
            failed=failed or None,
        )
        return health_rules.Verdict(failed=failed, seconds=verdict.seconds)

    def _settled_containers(self) -> list[model.ObservedContainer]:
        """The managed containers, once the engine finished removing any (a run killed during
        a removal leaves the engine to finish it: planning around a container that is about to
        vanish would keep it, then find it missing)."""
        monotonic, sleep = self._timing()
        deadline = monotonic() + SETTLE_SECONDS
        while True:
            observed = self.engine.list_managed()
            if monotonic() > deadline or all(o.status != "removing" for o in observed):
                return observed
            sleep(0.1)

    def _timing(self) -> tuple[Callable[[], float], Callable[[float], None]]:
        if self.clock is None:
            return time.monotonic, time.sleep
        return self.clock.monotonic, self.clock.sleep

    def _count_drift(
        self, actions: Sequence[model.Action], applied_revisions: Mapping[str, str]
    ) -> None:
        if self.metrics is None:
            return
        for action in actions:
            if action.kind in (model.ActionKind.CREATE, model.ActionKind.REPLACE) and (
                action.desired is not None
                and applied_revisions.get(action.app) == action.desired.revision
            ):
                self.metrics.record_drift(action.app)


def container_changes(actions: Sequence[model.Action]) -> list[model.Action]:
    """The actions that create, replace or remove a container: a pull is not a change of its
    own (one replaced container is one change, not two)."""
    return [a for a in planner.changes(actions) if a.kind is not model.ActionKind.PULL]


def _with_blocked(outcome: CycleOutcome, blocked: Mapping[str, str]) -> CycleOutcome:
    """A cycle that left apps as they are is a failed one, whatever the other apps did."""
    if not blocked:
        return outcome
    reasons = "; ".join(f"{app}: {why}" for app, why in sorted(blocked.items()))
    if outcome.result == "unchanged":
        return CycleOutcome("failed", f"left as it is: {reasons}", outcome.actions)
    if outcome.result == "converged":
        message = f"left as it is: {reasons}; the other apps: {outcome.message}"
        return CycleOutcome("failed", message, outcome.actions)
    return CycleOutcome(
        outcome.result, f"{outcome.message}; also left as it is: {reasons}", outcome.actions
    )
