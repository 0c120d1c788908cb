"""One reconcile cycle (SPEC 3.2): fetch, read the release, select, plan, apply, record.

Shell: orchestrates the adapters (`git`, `engine`, `store`, `metrics`) around the pure core. It is
level-based: every cycle compares the desired state with what the engine reports, so drift is
corrected even when Git did not move, and a cycle interrupted at any point is finished by the next.
`Reconciler` keeps only caches and back-off bookkeeping in memory; the truth lives in `state_dir`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from reconciler import logs, model, ports, text
from reconciler.adapters import sigstore_verifier
from reconciler.core import (
    crash_loops,
    desired,
    health_rules,
    manifests,
    planner,
    policy,
    release,
    state,
)
from reconciler.core.settings import DeviceSettings
from reconciler.core.urls import redact
from reconciler.device import executor, health_wait, state_store
from reconciler.errors import (
    ApplyError,
    EngineError,
    FetchError,
    Problem,
    ProblemsError,
    ReconcilerError,
    ReleaseError,
    RevisionRejected,
    VerificationError,
)

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

_log = logging.getLogger("reconciler.cycle")

Result = Literal["converged", "unchanged", "failed", "rolled_back"]
EXIT_CODES: dict[Result, int] = {"converged": 0, "unchanged": 0, "failed": 1, "rolled_back": 3}
MAX_MANIFEST_BYTES = 1024 * 1024
SETTLE_SECONDS = 30.0  # longest wait for removals the engine is still doing


@dataclass(frozen=True)
class CycleOutcome:
    """What one cycle did; `exit_code` is what `reconciler once` returns."""

    result: Result
    message: str
    actions: tuple[model.Action, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result]


@dataclass(frozen=True)
class _Target:
    """One app the device should run after this cycle, with the exact bytes it came from."""

    manifest: model.AppManifest
    data: bytes
    images: tuple[tuple[str, str], ...]

    def applied(self) -> state.AppliedApp:
        return state.AppliedApp(
            name=self.manifest.name,
            path=self.manifest.path,
            revision=self.manifest.revision,
            images=self.images,
        )


# One app's env files: (container -> digest field for the spec, container -> values).
_EnvFiles = tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]


@dataclass(frozen=True)
class _ReadRelease:
    """A release read at one commit, cached while the head does not move."""

    commit: str
    data: bytes
    parsed: release.Release
    files: Mapping[str, bytes]
    manifests: Mapping[str, model.AppManifest]
    problems: Mapping[str, tuple[str, ...]]  # path -> messages of invalid manifests


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
    ) -> None:
        self.settings = settings
        self.labels = dict(labels)
        self.git = git
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.verifier = sigstore_verifier.ReleaseVerifier(
            identities=[(i.identity, i.issuer) for i in settings.trust.identities],
            trusted_root=settings.trust.trusted_root,
        )
        self._cache: _ReadRelease | None = None
        self._crash_loops = crash_loops.CrashLoops()
        self._failed_apps: set[str] = set()  # in the release but invalid or forbidden here
        self.fetch_failures = 0  # consecutive; the daemon backs off on it
        self.consecutive_failures = 0  # cycles that crashed in a row; backed off like fetches
        self._crashed = False
        # Kept in memory (and in reconciler_last_fetch_success_timestamp_seconds), not in
        # state_dir: an unchanged poll writes nothing to flash (SPEC 3.2 step 1).
        self.last_fetch: datetime | None = None

    @property
    def backoff_failures(self) -> int:
        """Failures in a row the daemon backs off on: unreachable remotes or crashed cycles."""
        return max(self.fetch_failures, self.consecutive_failures)

    # -- the cycle ---------------------------------------------------------------------------

    def cycle(self, *, now: datetime | None = None) -> CycleOutcome:
        """Run one cycle; never raises (short of KeyboardInterrupt/SystemExit): fleet, engine
        and disk trouble, and any bug, end as a returned outcome."""
        started = time.monotonic()
        outcome = self._guarded("cycle", lambda: self._cycle(now or datetime.now(UTC)))
        self.consecutive_failures = self.consecutive_failures + 1 if self._crashed else 0
        if self.metrics is not None:
            self.metrics.record_cycle(outcome.result, time.monotonic() - started)
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
                failed=len(self._failed_apps),
            )
        return outcome

    def _guarded(self, what: str, run: Callable[[], CycleOutcome]) -> CycleOutcome:
        """`run()`, with anything it raises turned into a failed outcome: logged (a bug with
        its traceback), saved as `last_error` when `state.json` can be written. A state_dir that
        cannot be read or written, a bug, an adapter raising what it should not: the daemon
        lives on and backs off, and the next cycle starts afresh from state_dir and the engine.
        """
        self._crashed = False
        try:
            return run()
        except Exception as exc:  # the one place every failure is caught
            self._crashed = True
            message = self._describe(exc)
            # A state_dir that cannot be read or written is a fault of the device, reported
            # by its message; anything else is a bug, and its traceback is what fixes it.
            expected = isinstance(exc, (OSError, ReconcilerError))
            logs.event(
                _log,
                logging.ERROR,
                "cycle.aborted",
                what=what,
                error=message,
                exc_info=None if expected else exc,
            )
            outcome = CycleOutcome("failed", f"{what} failed: {message}")
            logs.event(
                _log,
                logging.ERROR,
                "cycle.done",
                result="failed",
                changes=0,
                message=outcome.message,
            )
            self._save_error_if_readable(outcome.message)
            return outcome

    def _cycle(self, now: datetime) -> CycleOutcome:
        current = self._recover(self.store.load())
        self._failed_apps = set()
        trust_disabled = self.settings.trust.allow_unsigned
        self._metric("set_trust_disabled", trust_disabled)
        if trust_disabled:
            logs.event(
                _log,
                logging.WARNING,
                "trust.disabled",
                detail="trust.allow_unsigned is true: releases are applied without a signature",
            )
        try:
            commit, current = self._fetch(current, now)
        except FetchError as exc:
            outcome = self._converge(current, self._applied_targets(current), now=now)
            return self._finish(outcome, failed=f"fetch failed, kept the applied state: {exc}")
        try:
            targets, info, deselected = self._targets_from_release(commit, current, now)
        except RevisionRejected as exc:
            self._record_rejection(exc)
            outcome = self._converge(current, self._applied_targets(current), now=now)
            return self._finish(
                outcome, failed=f"release at {commit[:12]} rejected, kept the applied state: {exc}"
            )
        except EngineError as exc:
            return self._finish(CycleOutcome("failed", f"engine: {exc}"))
        # A held-back revision the release no longer pins is history: its manifest changed.
        pinned = {m.name: m.revision for m in info.manifests.values()}
        held = tuple(h for h in current.held_back if pinned.get(h.app) == h.revision)
        if held != current.held_back:
            current = replace(current, held_back=held)
            self.store.save(current)
        outcome = self._converge(
            current,
            targets,
            now=now,
            release_info=info,
            deselected=deselected,
            guard_rollback=True,
        )
        return self._finish(outcome)

    def _finish(self, outcome: CycleOutcome, *, failed: str | None = None) -> CycleOutcome:
        if failed is not None and outcome.result in ("unchanged", "converged"):
            outcome = CycleOutcome("failed", failed, outcome.actions)
        level = logging.INFO if outcome.result in ("unchanged", "converged") else logging.ERROR
        logs.event(
            _log,
            level,
            "cycle.done",
            result=outcome.result,
            changes=len(_container_changes(outcome.actions)),
            message=outcome.message,
        )
        self._save_error(outcome.message if outcome.result in ("failed", "rolled_back") else None)
        return outcome

    def roll_back_by_hand(self, *, now: datetime | None = None) -> CycleOutcome:
        """`reconciler rollback`: every app back to the previous good state, from local state.

        The revisions it leaves are held back ("rolled back by hand"), so the next poll does not
        put them back; a later change of their manifest is applied as usual. Health-checked
        like any change (an unhealthy previous state is rolled back in turn and reported).
        """
        return self._guarded("rollback", lambda: self._roll_back_by_hand(now or datetime.now(UTC)))

    def _roll_back_by_hand(self, now: datetime) -> CycleOutcome:
        current = self._recover(self.store.load())
        if not current.previous_apps:
            return CycleOutcome("failed", "no previous state to return to")
        previous = replace(current, apps=current.previous_apps)
        targets = self._applied_targets(previous)
        if len(targets) != len(current.previous_apps):
            return CycleOutcome(
                "failed", "the previous state's manifests are missing from state_dir: not touched"
            )
        leaving = [a for a in current.apps if a not in current.previous_apps]
        held = tuple(h for h in current.held_back if h.app not in {a.name for a in leaving})
        held += tuple(
            state.HeldBack(
                app=a.name,
                revision=a.revision,
                reason="rolled back by hand",
                release_version=current.release_version or 0,
                at=_iso(now),
            )
            for a in leaving
        )
        start = replace(current, held_back=held)
        self.store.save(start)
        gone = {a.name for a in current.apps} - {a.name for a in current.previous_apps}
        logs.event(_log, logging.WARNING, "rollback.by_hand", apps=sorted(a.name for a in leaving))
        outcome = self._converge(start, targets, now=now, deselected=gone)
        if outcome.result in ("converged", "unchanged"):
            return CycleOutcome("converged", "returned to the previous state", outcome.actions)
        return outcome

    def _recover(self, current: state.DeviceState) -> state.DeviceState:
        """A transaction left open by a crash: the engine may be half way. The applied state
        (its from-side) stays the truth; the level-based pass below re-plans from what the
        engine shows, so the interrupted change is either redone whole or reverted."""
        if current.pending is None:
            return current
        logs.event(
            _log,
            logging.WARNING,
            "transaction.recover",
            release=current.pending.release_version,
            detail="previous cycle was interrupted; re-planning from the engine's state",
        )
        recovered = replace(current, pending=None)
        self.store.save(recovered)
        return recovered

    def _fetch(self, current: state.DeviceState, now: datetime) -> tuple[str, state.DeviceState]:
        """The head commit, readable from the cache, and the state with this fetch recorded.
        A failed remote counts in
        `reconciler_fetch_errors_total` even when a mirror answered after it."""
        try:
            head = self.git.head()
            for remote, _reason in head.failures:
                self._metric("record_fetch_error", remote)
            self.git.ensure(head.commit, head.remote)
        except FetchError as exc:
            self.fetch_failures += 1
            for remote, _reason in getattr(exc, "failures", ()):
                self._metric("record_fetch_error", remote)
            raise
        self.fetch_failures = 0
        self.last_fetch = now
        self._metric("record_fetch_success", now.timestamp())
        if current.last_fetch_commit == head.commit:
            return head.commit, current  # an unchanged poll writes nothing
        # The head moved: recorded for `status` (another process), with when it was first seen.
        fetched = replace(current, last_fetch=_iso(now), last_fetch_commit=head.commit)
        self.store.save(fetched)
        return head.commit, fetched

    def _targets_from_release(
        self, commit: str, current: state.DeviceState, now: datetime
    ) -> tuple[list[_Target], _ReadRelease, set[str]]:
        """The apps to run, the release, and the apps whose selector no longer matches."""
        read = self._read_release(commit)
        release.check_succession(
            applied_version=current.release_version,
            applied_digest=current.release_digest,
            new_version=read.parsed.version,
            new_digest=release.digest(read.data),
        )
        expired = release.is_expired(read.parsed, now)
        self._metric("set_release_expired", expired)
        if expired:
            expires = f"{read.parsed.expires:%Y-%m-%dT%H:%M:%SZ}"
            raise VerificationError(
                f"release {read.parsed.version} expired at {expires}; running apps are kept, "
                "nothing new is applied",
                reason="expired",
            )
        applied = {a.name: a for a in current.apps}
        pinned_images = read.parsed.pinned_images
        valid = []
        for manifest in sorted(read.manifests.values(), key=lambda m: m.path):
            problems = self._policy_problems(manifest, pinned_images.get(manifest.path, {}))
            if problems:
                self._failed_apps.add(manifest.name)
                for problem in problems:
                    logs.event(_log, logging.ERROR, "policy.violation", problem=str(problem))
                continue
            valid.append(manifest)
        for path, messages in sorted(read.problems.items()):
            self._failed_apps.add(path)
            for message in messages:
                logs.event(_log, logging.ERROR, "manifest.invalid", path=path, problem=message)
        decisions = desired.decide(
            valid,
            labels=self.labels,
            device_name=self.settings.device.name,
            now=now,
            since=read.parsed.since,
            pinned_images=pinned_images,
            running={name: app.revision for name, app in applied.items()},
            held_back={h.app: h.revision for h in current.held_back},
        )
        targets: list[_Target] = []
        decided = {d.app for d in decisions}
        for decision in decisions:
            if decision.decision == "run":
                data = read.files[decision.path]
                targets.append(_Target(decision.manifest, data, decision.images))
            elif decision.decision == "keep" and decision.app in applied:
                kept = self._applied_target(applied[decision.app])
                if kept is not None:
                    targets.append(kept)
            if decision.decision == "keep":
                logs.event(
                    _log, logging.INFO, "select.keep", app=decision.app, reason=decision.reason
                )
        # An app whose new manifest is invalid or forbidden keeps running what it ran.
        for name, app in applied.items():
            if name not in decided and (app.path in read.manifests or app.path in read.problems):
                kept = self._applied_target(app)
                if kept is not None:
                    targets.append(kept)
        deselected = {d.app for d in decisions if d.decision == "skip"}
        return targets, read, deselected

    def _policy_problems(
        self, manifest: model.AppManifest, pinned: Mapping[str, str]
    ) -> list[Problem]:
        """Policy judges what will run: the manifest with the images the release pins for it,
        so a pin cannot move a container to a registry the device does not allow, and a
        tag the release resolved to a digest satisfies `require_digest`."""
        running = replace(
            manifest,
            containers=tuple(
                replace(c, image=pinned.get(c.name, c.image)) for c in manifest.containers
            ),
        )
        return policy.check(running, self.settings.policy)

    def _read_release(self, commit: str) -> _ReadRelease:
        if self._cache is not None and self._cache.commit == commit:
            return self._cache
        data = self.git.read(commit, release.RELEASE_PATH, max_bytes=release.MAX_BYTES)
        if data is None:
            missing = Problem(release.RELEASE_PATH, "", f"missing at commit {commit[:12]}")
            raise ReleaseError([missing])
        if not self.settings.trust.allow_unsigned:
            # Nothing of an unverified release is parsed or trusted, not even its pins.
            bundle = self.git.read(
                commit, release.BUNDLE_PATH, max_bytes=sigstore_verifier.MAX_BUNDLE_BYTES
            )
            signer = self.verifier.verify(data, bundle, file=release.RELEASE_PATH)
            logs.event(
                _log,
                logging.DEBUG,
                "release.verified",
                commit=commit[:12],
                identity=signer.identity,
                issuer=signer.issuer,
            )
        parsed = release.parse(data)
        files: dict[str, bytes] = {}
        for path in parsed.pins:
            blob = self.git.read(commit, path, max_bytes=MAX_MANIFEST_BYTES)
            if blob is not None:
                files[path] = blob
        pin_problems = release.check_pins(parsed, files)
        if pin_problems:
            raise ReleaseError(pin_problems)
        parsed_manifests: dict[str, model.AppManifest] = {}
        problems: dict[str, tuple[str, ...]] = {}
        for path, blob in files.items():
            try:
                parsed_manifests[path] = manifests.parse(blob, path=path)
            except ProblemsError as exc:
                problems[path] = tuple(str(p) for p in exc.problems)
        self._cache = _ReadRelease(commit, data, parsed, files, parsed_manifests, problems)
        return self._cache

    # -- converging the engine to a set of targets --------------------------------------------

    def _applied_targets(self, current: state.DeviceState) -> list[_Target]:
        return [t for t in map(self._applied_target, current.apps) if t is not None]

    def _applied_target(self, app: state.AppliedApp) -> _Target | None:
        """Rebuild an applied app from the manifest kept in `state_dir` (no network)."""
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
        return _Target(manifest, data, app.images)

    def _converge(
        self,
        current: state.DeviceState,
        targets: Sequence[_Target],
        *,
        now: datetime,
        release_info: _ReadRelease | None = None,
        deselected: set[str] | None = None,
        guard_rollback: bool = False,
    ) -> CycleOutcome:
        """Make the engine run `targets`. An app whose env_file cannot be read, or (with
        `guard_rollback`) whose update could not be rolled back because the previous
        revision's images are not local, is left exactly as it is and fails the cycle; the
        other apps go ahead."""
        env, blocked = self._read_env_files(targets)
        applied = {a.name: a for a in current.apps}
        try:
            if guard_rollback:
                blocked.update(self._rollback_impossible(applied, targets, blocked))
        except EngineError as exc:
            return CycleOutcome("failed", f"could not prepare the apply: {exc}")
        for app, why in sorted(blocked.items()):
            self._failed_apps.add(app)
            logs.event(_log, logging.ERROR, "apply.blocked", app=app, reason=why)
        usable = [t for t in targets if t.manifest.name not in blocked]
        outcome = self._converge_targets(
            current,
            usable,
            now=now,
            env=env,
            blocked=set(blocked),
            release_info=release_info,
            deselected=deselected,
        )
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

    def _read_env_files(
        self, targets: Sequence[_Target]
    ) -> tuple[dict[str, _EnvFiles], dict[str, str]]:
        """Each target's env files read on the device, and the apps whose env_file is
        missing, unreadable, too big or malformed (-> the reason, naming file and line)."""
        env: dict[str, _EnvFiles] = {}
        broken: dict[str, str] = {}
        for target in targets:
            try:
                env[target.manifest.name] = self._env_files(target.manifest)
            except ProblemsError as exc:
                broken[target.manifest.name] = "; ".join(str(p) for p in exc.problems)
        return env, broken

    def _rollback_impossible(
        self,
        applied: Mapping[str, state.AppliedApp],
        targets: Sequence[_Target],
        blocked: Mapping[str, str],
    ) -> dict[str, str]:
        """Updates not to start: the images the app's current revision runs (what a rollback
        returns to, with no network) are gone from the engine. The new revision's own images
        are left out: they are pulled before anything is touched."""
        refused: dict[str, str] = {}
        for target in targets:
            name = target.manifest.name
            before = applied.get(name)
            if name in blocked or before is None or before == target.applied():
                continue
            new_refs = {ref for _container, ref in target.images}
            missing = sorted(
                ref
                for ref in {ref for _c, ref in before.images if ref not in new_refs}
                if not self._image_local(ref)
            )
            if missing:
                refused[name] = (
                    f"update to revision {target.manifest.revision[:12]} not started: the image(s) "
                    f"a rollback to revision {before.revision[:12]} needs are not in the engine "
                    f"({', '.join(missing)}); pull them or make the registry reachable"
                )
        return refused

    def _image_local(self, ref: str) -> bool:
        """Whether `ref` is in the engine, pulling it back when it is not (deleted by hand)."""
        if self.engine.image_present(ref):
            return True
        try:
            self.engine.pull(ref)
        except EngineError as exc:
            logs.event(_log, logging.WARNING, "rollback.image_missing", image=ref, reason=str(exc))
            return False
        logs.event(_log, logging.INFO, "rollback.image_restored", image=ref)
        return True

    def _converge_targets(
        self,
        current: state.DeviceState,
        targets: Sequence[_Target],
        *,
        now: datetime,
        env: Mapping[str, _EnvFiles],
        blocked: set[str],
        release_info: _ReadRelease | None,
        deselected: set[str] | None,
    ) -> CycleOutcome:
        namespace = self.settings.runtime.namespace
        wanted: list[model.DesiredContainer] = []
        env_files: dict[tuple[str, str], dict[str, str]] = {}
        try:
            for target in targets:
                extra, values = env[target.manifest.name]
                env_files.update({(target.manifest.name, c): v for c, v in values.items()})
                wanted += desired.containers(
                    target.manifest, images=dict(target.images), namespace=namespace, extra=extra
                )
            observed = self._settled_containers()
        except (EngineError, OSError) as exc:
            return CycleOutcome("failed", f"could not prepare the apply: {exc}")
        # Apps whose manifest we could not rebuild, or that are blocked, are left alone:
        # never remove what we cannot put back.
        known = {t.manifest.name for t in targets}
        prunable = self._dropped(current, release_info) | (deselected or set())
        frozen = ({a.name for a in current.apps} - known - prunable) | blocked
        observed = [o for o in observed if o.app not in frozen]
        applied_revisions = {a.name: a.revision for a in current.apps}
        actions = planner.plan(wanted, observed, namespace=namespace, applied=applied_revisions)
        actions = self._crash_loops.throttle(actions, observed, now)
        changes = _container_changes(actions)
        kept = [a for a in current.apps if a.name in blocked]
        to_apps = tuple(sorted([*(t.applied() for t in targets), *kept], key=lambda a: a.name))
        moved = replace(current, apps=to_apps)
        if release_info is not None:
            newer = release_info.parsed.version != current.release_version
            moved = replace(
                moved,
                release_version=release_info.parsed.version,
                release_digest=release.digest(release_info.data),
                commit=release_info.commit,
                # A refusal is stale once a newer release is recorded as applied.
                last_verification_failure=(None if newer else current.last_verification_failure),
            )
        changed_apps = _changed_apps(current.apps, to_apps)
        if not changes and not changed_apps:
            if moved != current:
                self._commit(current, moved, targets, now)
                return CycleOutcome("converged", "state recorded; containers already match")
            return CycleOutcome("unchanged", "nothing to do", tuple(actions))
        for target in targets:
            self.store.put_manifest(target.manifest.revision, target.data)
        pending = state.Transaction(
            from_apps=current.apps,
            to_apps=to_apps,
            release_version=moved.release_version or 0,
            commit=moved.commit or "",
            started_at=_iso(now),
        )
        # Recorded before the engine is touched: a crash from here on is finished or reverted
        # by the next run (the applied state stays the from-side until the commit below).
        self.store.save(replace(current, pending=pending))
        try:
            executor.apply(self.engine, actions, env_files=env_files)
        except EngineError as exc:
            self.store.save(current)
            return CycleOutcome("failed", f"nothing was changed: {exc}", tuple(actions))
        except ApplyError as exc:
            failed = {exc.app: str(exc)} if exc.app in changed_apps else {}
            return self._roll_back(
                current,
                moved,
                failed or dict.fromkeys(changed_apps, str(exc)),
                now=now,
                cause="apply failed",
            )
        if changed_apps:
            verdict = self._check_health(changed_apps, wanted)
            if not verdict.healthy:
                return self._roll_back(
                    current, moved, verdict.failed, now=now, cause="health check failed"
                )
        self._count_drift(actions, applied_revisions)
        self._commit(current, moved, targets, now)
        return CycleOutcome("converged", f"{len(changes)} change(s) applied", tuple(actions))

    def _settled_containers(self) -> list[model.ObservedContainer]:
        """The managed containers, once the engine finished removing any (a run killed during
        a removal leaves the engine to finish it: planning around a container that is about to
        vanish would keep it, then find it missing)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            observed: list[model.ObservedContainer] = self.engine.list_managed()  # type: ignore[attr-defined]
            if time.monotonic() > deadline or all(o.status != "removing" for o in observed):
                return observed
            time.sleep(0.1)

    def _commit(
        self,
        current: state.DeviceState,
        moved: state.DeviceState,
        targets: Sequence[_Target],
        now: datetime,
    ) -> None:
        for target in targets:
            self.store.put_manifest(target.manifest.revision, target.data)
        previous = current.apps if moved.apps != current.apps else current.previous_apps
        final = replace(moved, previous_apps=previous, pending=None, applied_at=_iso(now))
        self.store.save(final)
        keep = {a.revision for a in final.apps + final.previous_apps}
        self.store.prune_manifests(keep)
        if final.commit and final.release_version is not None:
            self._metric("set_applied", final.commit, final.release_version)

    def _roll_back(
        self,
        current: state.DeviceState,
        moved: state.DeviceState,
        failed: Mapping[str, str],
        *,
        now: datetime,
        cause: str,
    ) -> CycleOutcome:
        """Return every app changed in this cycle to its previous revision (manifests from
        `state_dir`, images still local: no network), hold back the revisions that failed so
        they are not tried again until their manifest changes, and check the rollback itself.
        The other changed apps were only caught up in it: they go ahead next cycle."""
        changed = {a.name: a for a in moved.apps if a not in current.apps}
        reasons = "; ".join(f"{app}: {why}" for app, why in sorted(failed.items()))
        logs.event(_log, logging.ERROR, "rollback.start", cause=cause, failed=reasons)
        held = tuple(h for h in current.held_back if h.app not in failed) + tuple(
            state.HeldBack(
                app=app,
                revision=changed[app].revision,
                reason=f"{cause}: {why}",
                release_version=moved.release_version or 0,
                at=_iso(now),
            )
            for app, why in sorted(failed.items())
            if app in changed
        )
        reverted = replace(current, held_back=held, pending=None)
        previous = self._applied_targets(current)
        outcome = self._converge(reverted, previous, now=now)
        message = f"{cause}, rolled back: {reasons}"
        for app in changed:
            self._metric("record_rollback", app)
        if outcome.result == "failed":
            message = f"{cause} and the rollback failed too: {reasons}; {outcome.message}"
            self.store.save(replace(self.store.load(), last_error=message))
            return CycleOutcome("failed", message)
        back = {t.manifest.name for t in previous} & set(changed)
        if back:
            try:
                wanted = self._desired_of([t for t in previous if t.manifest.name in back])
            except ProblemsError as exc:  # an env_file vanished: the check cannot be built
                wanted = []
                logs.event(_log, logging.ERROR, "rollback.unchecked", reason=str(exc))
            verdict = self._check_health(back, wanted)
            if not verdict.healthy:
                # Never a loop between two bad states: the new revision stays held back and
                # the previous one is left as it is, for a person to look at.
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
        self.store.save(replace(self.store.load(), last_error=message))
        return CycleOutcome("rolled_back", message)

    def _desired_of(self, targets: Sequence[_Target]) -> list[model.DesiredContainer]:
        namespace = self.settings.runtime.namespace
        wanted: list[model.DesiredContainer] = []
        for target in targets:
            extra, _values = self._env_files(target.manifest)
            wanted += desired.containers(
                target.manifest, images=dict(target.images), namespace=namespace, extra=extra
            )
        return wanted

    def _check_health(
        self, apps: set[str], wanted: Sequence[model.DesiredContainer]
    ) -> health_rules.Verdict:
        """Wait for the changed apps' containers to pass their checks (SPEC 3.2 step 6)."""
        try:
            observed = self.engine.list_managed()  # type: ignore[attr-defined]
        except EngineError as exc:
            return health_rules.Verdict(failed=dict.fromkeys(apps, f"engine: {exc}"), seconds=0.0)
        by_digest = {(o.app, o.container, o.spec_digest): o for o in observed}
        targets: list[health_rules.Target] = []
        missing: dict[str, str] = {}
        for d in wanted:
            if d.app not in apps:
                continue
            found = by_digest.get((d.app, d.spec.name, d.spec_digest))
            if found is None:
                missing.setdefault(d.app, f"container {d.spec.name} is missing after the apply")
                continue
            targets.append(health_rules.Target(d.app, d.spec.name, found.id, d.spec))
        logs.event(_log, logging.INFO, "health.wait", apps=sorted(apps))
        verdict = health_wait.wait_healthy(self.engine, targets, self.settings.health)  # type: ignore[arg-type]
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

    def _dropped(self, current: state.DeviceState, info: _ReadRelease | None) -> set[str]:
        """Applied apps a verified release no longer lists: only these may be pruned."""
        if info is None:
            return set()
        return {a.name for a in current.apps if a.path not in info.parsed.pins}

    def _env_files(
        self, manifest: model.AppManifest
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """Read each container's env_file on the device: its digest goes into the spec digest
        (a changed secret replaces the container), its values into the container."""
        from reconciler.adapters import docker_translate

        extra: dict[str, dict[str, str]] = {}
        values: dict[str, dict[str, str]] = {}
        for spec in manifest.containers:
            if spec.env_file is None:
                continue
            data = _read_env_file(spec.env_file)
            extra[spec.name] = {"env_file_sha256": hashlib.sha256(data).hexdigest()}
            values[spec.name] = docker_translate.parse_env_file(data, file=spec.env_file)
        return extra, values

    def _count_drift(
        self, actions: Sequence[model.Action], applied_revisions: Mapping[str, str]
    ) -> None:
        for action in actions:
            if action.kind in (model.ActionKind.CREATE, model.ActionKind.REPLACE) and (
                action.desired is not None
                and applied_revisions.get(action.app) == action.desired.revision
            ):
                self._metric("record_drift", action.app)

    # -- bookkeeping --------------------------------------------------------------------------

    def _record_rejection(self, exc: RevisionRejected) -> None:
        reason = exc.reason if isinstance(exc, VerificationError) else "malformed"
        if isinstance(exc, ReleaseError) and any("sha256" in str(p) for p in exc.problems):
            reason = "pin_mismatch"
        self._metric("record_verification_failure", reason)
        current = self.store.load()
        message = str(exc)
        if current.last_verification_failure != message:
            self.store.save(replace(current, last_verification_failure=message))

    def _save_error(self, message: str | None) -> None:
        current = self.store.load()
        if current.last_error != message:
            self.store.save(replace(current, last_error=message))

    def _save_error_if_readable(self, message: str) -> None:
        """Record `message` as `last_error` when state.json can be read and written. An
        unreadable state.json is never overwritten (it holds the last good state, a person
        must look), and a full or read-only state_dir cannot take it: the log and
        `reconciler_cycles_total{result="failed"}` carry it then, and `status` checks
        state_dir itself."""
        try:
            self._save_error(message)
        except Exception as exc:  # already failing: report and go on
            logs.event(
                _log,
                logging.ERROR,
                "state.error_not_saved",
                error=self._describe(exc),
                detail="last_error could not be recorded in state_dir",
            )

    def _describe(self, exc: BaseException) -> str:
        """One bounded line for an exception nobody handled, source credentials redacted."""
        if isinstance(exc, (ReconcilerError, OSError)):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        for url in (self.settings.source.url, *self.settings.source.mirrors):
            if redact(url) != url:
                message = message.replace(url, redact(url))
        return text.one_line(message)

    def _metric(self, name: str, *args: object) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name)(*args)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _changed_apps(
    before: Sequence[state.AppliedApp], after: Sequence[state.AppliedApp]
) -> set[str]:
    """Apps whose revision or images this cycle changes (new apps included): the ones that
    must prove healthy. Removed apps and drift repairs are not changes of an app."""
    old = {a.name: a for a in before}
    return {a.name for a in after if old.get(a.name) != a}


def _container_changes(actions: Sequence[model.Action]) -> list[model.Action]:
    """The actions that create, replace or remove a container: a pull is not a change of its
    own (one replaced container is one change, not two)."""
    return [a for a in planner.changes(actions) if a.kind is not model.ActionKind.PULL]


def _read_env_file(path: str) -> bytes:
    """The env file's bytes, read with the same 1 MiB cap as `docker_translate.read_env_file`;
    ProblemsError naming the file when it is missing, unreadable or too big."""
    from reconciler.adapters import docker_translate

    limit = docker_translate.MAX_ENV_FILE_BYTES
    try:
        # Non-blocking open, then only a regular file is read: a FIFO or device put in its
        # place would otherwise block the cycle (and the daemon) forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ProblemsError([Problem(path, "", "env file is not a regular file")])
            data = handle.read(limit + 1)
    except OSError as exc:
        reason = f"cannot read the env file: {exc.strerror or type(exc).__name__}"
        raise ProblemsError([Problem(path, "", reason)]) from None
    if len(data) > limit:
        raise ProblemsError([Problem(path, "", f"env file larger than {limit} bytes")])
    return data
