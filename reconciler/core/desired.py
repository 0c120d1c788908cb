"""The Select step (SPEC 3.2 step 3), pure: which revision of each app this device runs.

Pure: manifests, release pins, device labels and the clock in; decisions out. Used by the device
cycle and by `reconciler plan`, so a rollout preview shows exactly what a device would do.
It does not parse, verify or check policy: callers hand it validated manifests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from reconciler import model
from reconciler.core import maintenance, rollout, selection

Decision = Literal["run", "keep", "skip", "revert", "remove"]


@dataclass(frozen=True)
class AppDecision:
    """What the device does with one app of the release.

    `run`: run `manifest` (the new revision); `keep`: stay on the revision it runs now
    (`kept_revision`, possibly none yet) because of a rollout wave, a maintenance window, a
    local hold, a pause, an abort or a held-back revision (`waiting` names which, as `status`
    and the metrics show it; None for a held-back revision); `skip`: the selector does not match
    this device, so the app must not run here; `revert`: the release aborts the revision it
    runs, so it returns to its previous one (`kept_revision`); `remove`: aborted with no
    previous revision here, so it is removed.
    """

    app: str
    path: str
    decision: Decision
    reason: str
    manifest: model.AppManifest
    images: tuple[tuple[str, str], ...] = ()  # container -> image ref to run (pinned digests win)
    kept_revision: str | None = None
    waiting: str | None = None  # a state.WAITING_KINDS word, for a `keep`


def decide(
    manifests: Sequence[model.AppManifest],
    *,
    labels: Mapping[str, str],
    device_name: str,
    now: datetime,
    since: Mapping[str, datetime],
    pinned_images: Mapping[str, Mapping[str, str]] | None = None,
    running: Mapping[str, str] | None = None,
    held_back: Mapping[str, str] | None = None,
    deferral: maintenance.Deferral | None = None,
    paused: Set[str] = frozenset(),
    aborts: Mapping[str, str] | None = None,
    previous: Mapping[str, str] | None = None,
) -> list[AppDecision]:
    """Decide every app; `since`, `pinned_images`, `paused` and `aborts` (path -> aborted
    revision) are keyed by manifest path, `running`, `held_back` and `previous` (the revision
    an app ran before its current one) by app name (app -> revision).

    `deferral` (a closed maintenance window, a local hold) stops new revisions, new apps
    included, except those of urgent manifests; it never stops what keeps the device where it
    is or takes it back: a revision already applied (drift correction), an abort, a removal.
    """
    running = running or {}
    held_back = held_back or {}
    aborts = aborts or {}
    previous = previous or {}
    decisions = []
    for manifest in sorted(manifests, key=lambda m: m.name):
        images = _images(manifest, (pinned_images or {}).get(manifest.path, {}))
        current = running.get(manifest.name)

        def keep(
            reason: str,
            waiting: str | None,
            *,
            m: model.AppManifest = manifest,
            c: str | None = current,
        ) -> AppDecision:
            return AppDecision(m.name, m.path, "keep", reason, m, kept_revision=c, waiting=waiting)

        aborted = aborts.get(manifest.path)
        if not selection.matches(manifest.selector, labels):
            decisions.append(
                AppDecision(
                    manifest.name, manifest.path, "skip", "selector does not match", manifest
                )
            )
        elif aborted is not None and current == aborted:
            before = previous.get(manifest.name)
            if before is not None and before != aborted:
                why = f"revision {aborted[:12]} aborted by the release: back to {before[:12]}"
                decisions.append(
                    AppDecision(
                        manifest.name, manifest.path, "revert", why, manifest, kept_revision=before
                    )
                )
            else:
                why = f"revision {aborted[:12]} aborted by the release, no previous revision here"
                decisions.append(AppDecision(manifest.name, manifest.path, "remove", why, manifest))
        elif current == manifest.revision:
            decisions.append(
                AppDecision(
                    manifest.name, manifest.path, "run", "revision applied", manifest, images
                )
            )
        elif aborted == manifest.revision:
            decisions.append(
                keep(f"revision {manifest.revision[:12]} is aborted by the release", "aborted")
            )
        elif held_back.get(manifest.name) == manifest.revision:
            decisions.append(
                keep(f"revision {manifest.revision[:12]} is held back after a failed apply", None)
            )
        elif manifest.path in paused:
            decisions.append(keep("its rollout is paused by the release", "paused"))
        else:
            wave = rollout.decide(
                manifest.waves,
                device_name=device_name,
                app_name=manifest.name,
                since=since.get(manifest.path, now),
                now=now,
            )
            if not wave.included:
                decisions.append(keep(f"waiting for its rollout wave: {wave.reason}", "wave"))
            elif deferral is not None and not manifest.urgent:
                decisions.append(keep(deferral.reason, deferral.kind))
            else:
                reason = "new revision" if current else "new app"
                if manifest.waves:
                    reason += f"; {wave.reason}"
                if deferral is not None:
                    reason += f"; urgent, not deferred ({deferral.kind})"
                decisions.append(
                    AppDecision(manifest.name, manifest.path, "run", reason, manifest, images)
                )
    return decisions


def _images(manifest: model.AppManifest, pinned: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((c.name, pinned.get(c.name, c.image)) for c in manifest.containers)


def containers(
    manifest: model.AppManifest,
    *,
    images: Mapping[str, str],
    namespace: str,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> list[model.DesiredContainer]:
    """The desired containers of one app, images substituted and spec digests computed.

    `extra` maps container name -> device-side inputs (e.g. env_file content digest).
    """
    result = []
    for order, spec in enumerate(manifest.containers):
        concrete = replace(spec, image=images.get(spec.name, spec.image))
        digest = model.spec_digest(
            concrete, namespace=namespace, extra=dict((extra or {}).get(spec.name, {}))
        )
        result.append(
            model.DesiredContainer(
                app=manifest.name,
                revision=manifest.revision,
                spec=concrete,
                spec_digest=digest,
                order=order,
            )
        )
    return result
