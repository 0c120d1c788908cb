"""One reconcile cycle (SPEC 3.2): ordered steps fetch, intake, select, converge.

Shell: runs the steps against injected adapters (a `FleetSource`, a `ContainerEngine`, the
state store, metrics) and turns every error into a `CycleOutcome`. It is level-based: every
cycle compares the desired state with what the engine reports, so drift is corrected even when
Git did not move, and a cycle interrupted at any point is finished by the next. An unexpected
exception is a failed cycle plus a metric, never a dead daemon. `Reconciler` keeps only caches
and back-off bookkeeping in memory; the truth lives in `state_dir`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from reconciler import logs, ports
from reconciler.core import state, targets, transitions, trust
from reconciler.core.settings import DeviceSettings
from reconciler.device import converge, deferrals, intake, journal, rollback, state_store
from reconciler.device.outcome import EXIT_CODES, CycleOutcome, Result
from reconciler.errors import (
    EngineError,
    FetchError,
    RevisionRejected,
)

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

__all__ = ["EXIT_CODES", "CycleOutcome", "Reconciler", "Result"]

_log = logging.getLogger("reconciler.cycle")


class Reconciler:
    """Runs cycles against injected adapters; one instance lives as long as the daemon."""

    def __init__(
        self,
        *,
        settings: DeviceSettings,
        labels: Mapping[str, str],
        git: ports.FleetSource,
        engine: ports.ContainerEngine,
        store: state_store.StateStore,
        metrics: Metrics | None = None,
        verifier: ports.ReleaseVerifier | None = None,
        clock: ports.Clock | None = None,
    ) -> None:
        """`verifier` defaults to the sigstore verifier of `settings.trust`, `clock` to the
        system's."""
        self.settings = settings
        self.labels = dict(labels)
        self.git = git
        self.store = store
        self.metrics = metrics
        if verifier is None:
            from reconciler.adapters import sigstore_verifier

            verifier = sigstore_verifier.for_trust(settings.trust)
        self.intake = intake.Intake(git, verifier, allow_unsigned=settings.trust.allow_unsigned)
        self.clock = clock or SystemClock()
        self.converger = converge.Converger(settings, engine, store, metrics, clock=self.clock)
        self.journal = journal.Journal(settings, store, metrics)
        self.fetch_failures = 0  # consecutive; the daemon backs off on it
        self.consecutive_failures = 0  # cycles that crashed in a row; backed off like fetches
        # Kept in memory (and in reconciler_last_fetch_success_timestamp_seconds), not in
        # state_dir: an unchanged poll writes nothing to flash (SPEC 3.2 step 1).
        self.last_fetch: datetime | None = None
        # What the last Select step saw, for reconciler_app_info: None before any release.
        self.last_selection: targets.Selection | None = None
        self.last_content: targets.ReleaseContent | None = None

    @property
    def backoff_failures(self) -> int:
        """Failures in a row the daemon backs off on: unreachable remotes or crashed cycles."""
        return max(self.fetch_failures, self.consecutive_failures)

    # -- the cycle ---------------------------------------------------------------------------

    def cycle(self, *, now: datetime | None = None) -> CycleOutcome:
        """Run one cycle; never raises (short of KeyboardInterrupt/SystemExit): fleet, engine
        and disk trouble, and any bug, end as a returned outcome."""
        started = self.clock.monotonic()
        outcome = self.journal.guarded("cycle", lambda: self._cycle(now or self.clock.now()))
        self.consecutive_failures = self.consecutive_failures + 1 if self.journal.crashed else 0
        if self.metrics is not None:
            self.metrics.record_cycle(outcome.result, self.clock.monotonic() - started)
            try:
                final = self.store.load()
            except (state.StateError, OSError):
                return outcome  # already reported by the cycle; the gauges keep their values
            self.metrics.know_apps(a.name for a in final.apps)
            if final.commit and final.release_version is not None:
                self.metrics.set_applied(final.commit, final.release_version)
            self.metrics.set_app_counts(
                running=len(final.apps),
                held_back=len(final.held_back),
                failed=len(self.converger.failed_apps),
            )
            self._record_rollout_metrics(final, now or self.clock.now())
        return outcome

    def _record_rollout_metrics(self, final: state.DeviceState, now: datetime) -> None:
        """reconciler_device_info, _app_info, _hold, _in_maintenance_window (SPEC 3.4)."""
        assert self.metrics is not None
        view = deferrals.read_hold(self.store, now)
        plan = deferrals.schedule(self.settings)
        self.metrics.set_device(self.settings.device.name)
        self.metrics.set_hold(view.active)
        self.metrics.set_in_maintenance_window(plan is None or plan.in_window(now))
        newest = (
            {m.name: m.revision for m in self.last_content.manifests.values()}
            if self.last_content is not None
            else {}
        )
        self.metrics.set_app_info(
            app_states(final, newest=newest, failed=self.converger.failed_apps)
        )

    def roll_back_by_hand(self, *, now: datetime | None = None) -> CycleOutcome:
        """`reconciler rollback`: every app back to the previous good state (see rollback)."""
        return self.journal.guarded(
            "rollback",
            lambda: rollback.by_hand(
                self.converger, self._recover(self.store.load()), now or self.clock.now()
            ),
        )

    def _cycle(self, now: datetime) -> CycleOutcome:
        current = self._recover(self.store.load())
        self.converger.failed_apps = set()
        trust_disabled = self.settings.trust.allow_unsigned
        if self.metrics is not None:
            self.metrics.set_trust_disabled(trust_disabled)
        if trust_disabled:
            logs.event(
                _log,
                logging.WARNING,
                "trust.disabled",
                detail="trust.allow_unsigned is true: releases are applied without a signature",
            )
        keep_applied = self.converger.rebuild_all
        try:
            commit, current = self._fetch(current, now)
        except FetchError as exc:
            outcome = self.converger.converge(current, keep_applied(current), now=now)
            return self.journal.finish(
                outcome, failed=f"fetch failed, kept the applied state: {exc}"
            )
        try:
            trusted, content = self._intake(commit, current, now)
            content = with_rollout_control(content, trusted)
            selection = self._select(content, current, now)
        except FetchError as exc:  # a source that fetches pinned files on demand lost them
            self.fetch_failures += 1
            self.journal.count_fetch_errors(exc.failures)
            outcome = self.converger.converge(current, keep_applied(current), now=now)
            return self.journal.finish(
                outcome, failed=f"fetch failed, kept the applied state: {exc}"
            )
        except RevisionRejected as exc:
            self.journal.record_rejection(exc)
            outcome = self.converger.converge(current, keep_applied(current), now=now)
            return self.journal.finish(
                outcome, failed=f"release at {commit[:12]} rejected, kept the applied state: {exc}"
            )
        except EngineError as exc:
            return self.journal.finish(CycleOutcome("failed", f"engine: {exc}"))
        pinned = {m.name: m.revision for m in content.manifests.values()}
        held = transitions.holds_still_pinned(current, pinned)
        held = transitions.aborted(
            held, selection.aborted, release_version=trusted.release.version, now=now
        )
        held = transitions.waiting(held, selection.waiting)
        if held != current:
            current = held
            self.store.save(current)
        outcome = self.converger.converge(
            current,
            selection.targets,
            now=now,
            content=content,
            source=transitions.ReleaseRecord(trusted.release.version, trusted.digest, commit),
            deselected=selection.deselected,
            guard_rollback=True,
        )
        return self.journal.finish(outcome)

    def _recover(self, current: state.DeviceState) -> state.DeviceState:
        """A transaction left open by a crash: the engine may be half way. The level-based
        pass re-plans from what the engine shows, so it is either redone whole or reverted."""
        if current.pending is None:
            return current
        logs.event(
            _log,
            logging.WARNING,
            "transaction.recover",
            release=current.pending.release_version,
            detail="previous cycle was interrupted; re-planning from the engine's state",
        )
        recovered = transitions.recovered(current)
        self.store.save(recovered)
        return recovered

    def _fetch(self, current: state.DeviceState, now: datetime) -> tuple[str, state.DeviceState]:
        """The head commit, readable from the cache, and the state with this fetch recorded.
        A failed remote counts in `reconciler_fetch_errors_total` even when a mirror answered
        after it. The head query counts in `reconciler_source_requests_total` against the head
        last fetched (state_dir's, so a restart does not make an unchanged head "changed")."""
        requested = "error"
        try:
            head = self.git.head()
            requested = "not_modified" if head.commit == current.last_fetch_commit else "changed"
            self.journal.count_fetch_errors(head.failures)
            self.git.ensure(head.commit, head.remote)
        except FetchError as exc:
            self.fetch_failures += 1
            self.journal.count_fetch_errors(exc.failures)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.record_source_request(requested)
        self.fetch_failures = 0
        self.last_fetch = now
        if self.metrics is not None:
            self.metrics.record_fetch_success(now.timestamp())
        if current.last_fetch_commit == head.commit:
            return head.commit, current  # an unchanged poll writes nothing
        # The head moved: recorded for `status` (another process), with when it was first seen.
        fetched = transitions.fetched(current, head.commit, now)
        self.store.save(fetched)
        return head.commit, fetched

    def _intake(
        self, commit: str, current: state.DeviceState, now: datetime
    ) -> tuple[trust.TrustedRelease, targets.ReleaseContent]:
        """The trusted release at `commit`, applicable over the applied one right now."""
        trusted, content = self.intake.read(commit)
        if self.metrics is not None:
            self.metrics.set_release_expired(trusted.expired(now))
        trusted.check_applicable(
            applied_version=current.release_version,
            applied_digest=current.release_digest,
            now=now,
        )
        return trusted, content

    def _select(
        self, content: targets.ReleaseContent, current: state.DeviceState, now: datetime
    ) -> targets.Selection:
        """The Select step, with what it decided logged and the apps failed here counted."""
        deferral, _hold, _in_window = deferrals.deferral(self.settings, self.store, now)
        selection = targets.select(
            content,
            current,
            settings=self.settings,
            labels=self.labels,
            now=now,
            rebuild=self.converger.rebuild,
            deferral=deferral,
        )
        self.last_selection, self.last_content = selection, content
        for problems in selection.forbidden.values():
            for problem in problems:
                logs.event(_log, logging.ERROR, "policy.violation", problem=problem)
        for path, messages in selection.invalid.items():
            for message in messages:
                logs.event(_log, logging.ERROR, "manifest.invalid", path=path, problem=message)
        for app, reason in selection.kept.items():
            logs.event(_log, logging.INFO, "select.keep", app=app, reason=reason)
        # Failed apps by name; a manifest too broken to name counts by its applied app's name,
        # or by its path when no app runs from it.
        by_path = {a.path: a.name for a in current.apps}
        self.converger.failed_apps |= set(selection.forbidden) | {
            by_path.get(path, path) for path in selection.invalid
        }
        return selection


def with_rollout_control(
    content: targets.ReleaseContent, trusted: trust.TrustedRelease
) -> targets.ReleaseContent:
    """The release's paused and aborted rollouts (SPEC 2.3), from the verified release only."""
    pins = trusted.release.pins
    paused = frozenset(path for path, pin in pins.items() if getattr(pin, "paused", False))
    aborts = {path: abort for path, pin in pins.items() if (abort := getattr(pin, "abort", None))}
    return replace(content, paused=paused, aborts=aborts)


def app_states(
    final: state.DeviceState, *, newest: Mapping[str, str], failed: set[str]
) -> dict[str, tuple[str, str]]:
    """app -> (revision, state) for reconciler_app_info, one per app: `failed` (failed here
    this cycle: the release's revision), `held_back` (the release's revision is held back here:
    it failed, or it ran here and was aborted), `paused` / `pending` (the release's revision
    waits for the fleet, or for a wave, window or hold), else `running` (the applied revision).

    An aborted revision this device never ran is `paused`, not `held_back`: the fleet stopped
    it before it came here, and fleet-status counts held_back as tried and failed.
    """
    result: dict[str, tuple[str, str]] = {app.name: (app.revision, "running") for app in final.apps}
    for waiting in final.waiting:
        kind = {"paused": "paused", "aborted": "paused"}.get(waiting.kind, "pending")
        result[waiting.app] = (waiting.revision, kind)
    for held in final.held_back:
        if newest.get(held.app) == held.revision:
            result[held.app] = (held.revision, "held_back")
    for app in failed:
        if app in newest:
            result[app] = (newest[app], "failed")
    return result


class SystemClock:
    """The `ports.Clock` of a real device: UTC wall time, the monotonic clock, real sleeps."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
