"""What the device should run after this cycle (SPEC 3.2 step 3), pure.

The Select step's decisions, the applied state and the manifests kept in `state_dir` in; the
targets out (each with the exact bytes it came from), with the apps that are failed here
(invalid or forbidden) and the apps to prune or leave alone. Must not: read files, talk to the
engine, log: the device does that around it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from reconciler import model
from reconciler.core import desired, maintenance, policy, state
from reconciler.core.settings import DeviceSettings
from reconciler.errors import Problem


@dataclass(frozen=True)
class Target:
    """One app the device should run after this cycle, with the exact bytes it came from."""

    manifest: model.AppManifest
    data: bytes
    images: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return self.manifest.name

    def applied(self) -> state.AppliedApp:
        return state.AppliedApp(
            name=self.manifest.name,
            path=self.manifest.path,
            revision=self.manifest.revision,
            images=self.images,
        )


@dataclass(frozen=True)
class ReleaseContent:
    """A trusted release's apps at one commit: parsed manifests, and the invalid ones."""

    pinned_images: Mapping[str, Mapping[str, str]]  # path -> container -> image ref
    since: Mapping[str, datetime]  # path -> when its revision entered the release
    files: Mapping[str, bytes]  # path -> the pinned bytes
    manifests: Mapping[str, model.AppManifest]  # path -> the valid manifests
    problems: Mapping[str, tuple[str, ...]]  # path -> messages of invalid manifests
    pins: frozenset[str]  # every path the release pins
    # Rollout control from the signed release (SPEC 2.3), by manifest path.
    paused: frozenset[str] = frozenset()
    aborts: Mapping[str, str] = field(default_factory=dict)  # path -> aborted revision

    def dropped(self, current: state.DeviceState) -> set[str]:
        """Applied apps this release no longer lists: only these may be pruned."""
        return {a.name for a in current.apps if a.path not in self.pins}


@dataclass(frozen=True)
class Selection:
    """The Select step's outcome for one device."""

    targets: list[Target]
    deselected: set[str]  # apps whose selector no longer matches: removed
    forbidden: dict[str, list[str]] = field(default_factory=dict)  # app -> policy problems
    invalid: dict[str, tuple[str, ...]] = field(default_factory=dict)  # path -> problems
    kept: dict[str, str] = field(default_factory=dict)  # app -> why it stays where it is
    # Release revisions not taken here yet, and why (for status and the metrics).
    waiting: tuple[state.Waiting, ...] = ()
    aborted: dict[str, str] = field(default_factory=dict)  # app -> revision to hold back

    @property
    def failed(self) -> set[str]:
        """Apps (by name) and manifests (by path) of the release this device cannot run."""
        return set(self.forbidden) | set(self.invalid)


# Rebuilds an applied app from the manifest kept in state_dir; None when that is impossible.
Rebuild = Callable[[state.AppliedApp], Target | None]


def select(
    content: ReleaseContent,
    current: state.DeviceState,
    *,
    settings: DeviceSettings,
    labels: Mapping[str, str],
    now: datetime,
    rebuild: Rebuild,
    deferral: maintenance.Deferral | None = None,
) -> Selection:
    """The apps to run: the release's decisions for this device, with every app that cannot
    move (waiting for its wave, a window, a hold or a paused rollout, held back, its new
    manifest invalid or forbidden) kept on the revision it runs. An app whose running revision
    the release aborts returns to its previous revision (rebuilt from state_dir) or, with none,
    is removed; the aborted revision is to be held back (`Selection.aborted`)."""
    applied = {a.name: a for a in current.apps}
    previous = {a.name: a for a in current.app_previous}
    valid: list[model.AppManifest] = []
    forbidden: dict[str, list[str]] = {}
    for manifest in sorted(content.manifests.values(), key=lambda m: m.path):
        problems = policy_problems(
            manifest, content.pinned_images.get(manifest.path, {}), settings.policy
        )
        if problems:
            forbidden[manifest.name] = [str(p) for p in problems]
        else:
            valid.append(manifest)
    decisions = desired.decide(
        valid,
        labels=labels,
        device_name=settings.device.name,
        now=now,
        since=content.since,
        pinned_images=content.pinned_images,
        running={name: app.revision for name, app in applied.items()},
        held_back={h.app: h.revision for h in current.held_back},
        deferral=deferral,
        paused=content.paused,
        aborts=content.aborts,
        previous={name: app.revision for name, app in previous.items()},
    )
    targets: list[Target] = []
    kept: dict[str, str] = {}
    waiting: list[state.Waiting] = []
    aborted: dict[str, str] = {}
    removed: set[str] = set()
    for decision in decisions:
        if decision.decision == "run":
            targets.append(Target(decision.manifest, content.files[decision.path], decision.images))
        elif decision.decision == "keep":
            kept[decision.app] = decision.reason
            if decision.waiting is not None:
                revision = decision.manifest.revision
                waiting.append(
                    state.Waiting(decision.app, revision, decision.waiting, decision.reason)
                )
            if decision.app in applied and (found := rebuild(applied[decision.app])):
                targets.append(found)
        elif decision.decision in ("revert", "remove"):
            running = applied[decision.app]
            if decision.manifest.revision == running.revision:
                # The newest revision is the aborted one: it waits for good.
                waiting.append(
                    state.Waiting(decision.app, running.revision, "aborted", decision.reason)
                )
            back = rebuild(previous[decision.app]) if decision.decision == "revert" else None
            if decision.decision == "revert" and back is None:
                # Its previous manifest is gone from state_dir: stay, and say why.
                kept[decision.app] = f"{decision.reason}, but its manifest is not kept here"
                if found := rebuild(running):
                    targets.append(found)
                continue
            kept[decision.app] = decision.reason
            aborted[decision.app] = running.revision
            if back is not None:
                targets.append(back)
            else:
                removed.add(decision.app)
    # An app whose new manifest is invalid or forbidden keeps running what it ran.
    decided = {d.app for d in decisions}
    for name, app in applied.items():
        if name not in decided and (app.path in content.manifests or app.path in content.problems):
            found = rebuild(app)
            if found is not None:
                targets.append(found)
    return Selection(
        targets=targets,
        deselected={d.app for d in decisions if d.decision == "skip"} | removed,
        forbidden=forbidden,
        invalid=dict(sorted(content.problems.items())),
        kept=kept,
        waiting=tuple(waiting),
        aborted=aborted,
    )


def policy_problems(
    manifest: model.AppManifest, pinned: Mapping[str, str], device_policy: model.DevicePolicy
) -> list[Problem]:
    """Policy judges what will run: the manifest with the images the release pins for it, so
    a pin cannot move a container to a registry the device does not allow, and a tag the
    release resolved to a digest satisfies `require_digest`."""
    running = replace(
        manifest,
        containers=tuple(
            replace(c, image=pinned.get(c.name, c.image)) for c in manifest.containers
        ),
    )
    return policy.check(running, device_policy)


def frozen_apps(
    current: state.DeviceState,
    targets: Sequence[Target],
    *,
    prunable: set[str],
    blocked: set[str],
) -> set[str]:
    """Apps whose containers are left exactly as they are: applied apps this cycle cannot
    rebuild (never remove what cannot be put back), and the blocked ones."""
    known = {t.name for t in targets}
    return ({a.name for a in current.apps} - known - prunable) | blocked
