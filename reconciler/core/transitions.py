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

from reconciler.core.state import AppliedApp, DeviceState, HeldBack, Transaction, Waiting


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
    """`target` applied: what ran before becomes the previous state (when the apps moved),
    and each app that changed revision remembers the one it left (`app_previous`)."""
    previous = current.apps if target.apps != current.apps else current.previous_apps
    return replace(
        target,
        previous_apps=previous,
        app_previous=app_history(current, target.apps),
        pending=None,
        applied_at=iso(now),
    )


def app_history(current: DeviceState, to_apps: Sequence[AppliedApp]) -> tuple[AppliedApp, ...]:
    """Per app, the revision it ran before the one in `to_apps`: set when an app moves to a
    new revision; dropped when it returns to that very revision (an abort or a rollback by
    hand: one step of history, not a stack) and when the app leaves the device."""
    before = {a.name: a for a in current.apps}
    history = {a.name: a for a in current.app_previous}
    result: dict[str, AppliedApp] = {}
    for app in to_apps:
        old = before.get(app.name)
        kept = history.get(app.name)
        if old is None or (kept is not None and kept.revision == app.revision):
            continue  # a new app has no history; a return to the previous one uses it up
        if old.revision != app.revision:
            result[app.name] = old
        elif kept is not None:
            result[app.name] = kept
    return tuple(result[name] for name in sorted(result))


def kept_revisions(final: DeviceState) -> set[str]:
    """The manifests `state_dir` must keep: what runs, what a rollback returns to and what an
    abort returns each app to."""
    return {a.revision for a in final.apps + final.previous_apps + final.app_previous}


def aborted(
    current: DeviceState, revisions: Mapping[str, str], *, release_version: int, now: datetime
) -> DeviceState:
    """Revisions the release aborts (app -> revision) held back on this device: it leaves
    them and never takes them again while the release pins them."""
    if not revisions:
        return current
    held = tuple(h for h in current.held_back if h.app not in revisions) + tuple(
        HeldBack(
            app=app,
            revision=revision,
            reason=f"aborted by release {release_version}",
            release_version=release_version,
            at=iso(now),
        )
        for app, revision in sorted(revisions.items())
    )
    return replace(current, held_back=held)


def waiting(current: DeviceState, found: Sequence[Waiting]) -> DeviceState:
    """The release revisions not taken yet, as `status` shows them (unchanged: same state)."""
    ordered = tuple(sorted(found, key=lambda w: w.app))
    return current if ordered == current.waiting else replace(current, waiting=ordered)


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
