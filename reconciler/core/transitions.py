"""Transitions of the device state (SPEC 3.2 "State"), pure: one `DeviceState` in, the next out.

Each cycle moves through a few of them: a head fetched, a change begun (the transaction a crash
may leave open), committed, rolled back, or rolled back by hand. Keeping them here, apart from
the code that writes them, lets tests pin every transition without a disk or an engine. Must
not: read or write files, decide what to apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from reconciler.core.state import AppliedApp, DeviceState, HeldBack, Transaction


def iso(moment: datetime) -> str:
    """The state file's time format: UTC, seconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def recovered(current: DeviceState) -> DeviceState:
    """A transaction left open by a crash closed: the applied state (its from-side) stays the
    truth, and the next pass re-plans from what the engine shows."""
    return replace(current, pending=None)


def fetched(current: DeviceState, commit: str, now: datetime) -> DeviceState:
    """A head seen for the first time, with when (for `status`)."""
    return replace(current, last_fetch=iso(now), last_fetch_commit=commit)


def holds_still_pinned(current: DeviceState, pinned: Mapping[str, str]) -> DeviceState:
    """Held-back revisions the release no longer pins (app -> revision) are history: their
    manifest changed, so the new revision is tried."""
    held = tuple(h for h in current.held_back if pinned.get(h.app) == h.revision)
    return current if held == current.held_back else replace(current, held_back=held)


@dataclass(frozen=True)
class ReleaseRecord:
    """The release a state came from, as `state.json` records it."""

    version: int
    digest: str
    commit: str


def moved(
    current: DeviceState, to_apps: Sequence[AppliedApp], source: ReleaseRecord | None
) -> DeviceState:
    """The state to commit once `to_apps` run, from a release (`source`) or from local state
    only (None: a rollback, the release fields stay)."""
    target = replace(current, apps=tuple(sorted(to_apps, key=lambda a: a.name)))
    if source is None:
        return target
    newer = source.version != current.release_version
    return replace(
        target,
        release_version=source.version,
        release_digest=source.digest,
        commit=source.commit,
        # A refusal is stale once a newer release is recorded as applied.
        last_verification_failure=None if newer else current.last_verification_failure,
    )


def begun(current: DeviceState, target: DeviceState, now: datetime) -> DeviceState:
    """`current` with the open transaction towards `target`, saved before the engine is
    touched: a crash from then on is finished or reverted by the next run."""
    pending = Transaction(
        from_apps=current.apps,
        to_apps=target.apps,
        release_version=target.release_version or 0,
        commit=target.commit or "",
        started_at=iso(now),
    )
    return replace(current, pending=pending)


def committed(current: DeviceState, target: DeviceState, now: datetime) -> DeviceState:
    """`target` applied: what ran before becomes the previous state (when the apps moved)."""
    previous = current.apps if target.apps != current.apps else current.previous_apps
    return replace(target, previous_apps=previous, pending=None, applied_at=iso(now))


def kept_revisions(final: DeviceState) -> set[str]:
    """The manifests `state_dir` must keep: what runs and what a rollback returns to."""
    return {a.revision for a in final.apps + final.previous_apps}


def changed_apps(before: Sequence[AppliedApp], after: Sequence[AppliedApp]) -> set[str]:
    """Apps whose revision or images change (new apps included): the ones that must prove
    healthy. Removed apps and drift repairs are not changes of an app."""
    old = {a.name: a for a in before}
    return {a.name for a in after if old.get(a.name) != a}


def rolled_back(
    current: DeviceState,
    target: DeviceState,
    failed: Mapping[str, str],
    *,
    cause: str,
    now: datetime,
) -> DeviceState:
    """Back to `current`, with the revisions of `target` that failed held back (app -> why)
    so they are not tried again until their manifest changes."""
    changed = {a.name: a for a in target.apps if a not in current.apps}
    held = tuple(h for h in current.held_back if h.app not in failed) + tuple(
        HeldBack(
            app=app,
            revision=changed[app].revision,
            reason=f"{cause}: {why}",
            release_version=target.release_version or 0,
            at=iso(now),
        )
        for app, why in sorted(failed.items())
        if app in changed
    )
    return replace(current, held_back=held, pending=None)


def by_hand(current: DeviceState, now: datetime) -> tuple[DeviceState, list[AppliedApp]]:
    """`reconciler rollback`: the state to start from, with every revision that leaves held
    back ("rolled back by hand"), and the apps that leave."""
    leaving = [a for a in current.apps if a not in current.previous_apps]
    held = tuple(h for h in current.held_back if h.app not in {a.name for a in leaving})
    held += tuple(
        HeldBack(
            app=a.name,
            revision=a.revision,
            reason="rolled back by hand",
            release_version=current.release_version or 0,
            at=iso(now),
        )
        for a in leaving
    )
    return replace(current, held_back=held), leaving
