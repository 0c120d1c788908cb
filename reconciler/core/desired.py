"""The Select step (SPEC 3.2 step 3), pure: which revision of each app this device runs.

Pure: manifests, release pins, device labels and the clock in; decisions out. Used by the device
cycle and by `reconciler plan`, so a rollout preview shows exactly what a device would do.
It does not parse, verify or check policy: callers hand it validated manifests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from reconciler import model
from reconciler.core import rollout, selection

Decision = Literal["run", "keep", "skip"]


@dataclass(frozen=True)
class AppDecision:
    """What the device does with one app of the release.

    `run`: run `manifest` (the new revision); `keep`: stay on the revision it runs now
    (`kept_revision`, possibly none yet) because of a rollout wave or a held-back revision;
    `skip`: the selector does not match this device, so the app must not run here.
    """

    app: str
    path: str
    decision: Decision
    reason: str
    manifest: model.AppManifest
    images: tuple[tuple[str, str], ...] = ()  # container -> image ref to run (pinned digests win)
    kept_revision: str | None = None


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
) -> list[AppDecision]:
    """Decide every app; `since`, `pinned_images` are keyed by manifest path, `running` and
    `held_back` by app name (app -> revision)."""
    running = running or {}
    held_back = held_back or {}
    decisions = []
    for manifest in sorted(manifests, key=lambda m: m.name):
        images = _images(manifest, (pinned_images or {}).get(manifest.path, {}))
        current = running.get(manifest.name)

        def keep(
            reason: str, *, m: model.AppManifest = manifest, c: str | None = current
        ) -> AppDecision:
            return AppDecision(m.name, m.path, "keep", reason, m, kept_revision=c)

        if not selection.matches(manifest.selector, labels):
            decisions.append(
                AppDecision(
                    manifest.name, manifest.path, "skip", "selector does not match", manifest
                )
            )
        elif current == manifest.revision:
            decisions.append(
                AppDecision(
                    manifest.name, manifest.path, "run", "revision applied", manifest, images
                )
            )
        elif held_back.get(manifest.name) == manifest.revision:
            decisions.append(
                keep(f"revision {manifest.revision[:12]} is held back after a failed apply")
            )
        else:
            wave = rollout.decide(
                manifest.waves,
                device_name=device_name,
                app_name=manifest.name,
                since=since.get(manifest.path, now),
                now=now,
            )
            if wave.included:
                reason = "new revision" if current else "new app"
                if manifest.waves:
                    reason += f"; {wave.reason}"
                decisions.append(
                    AppDecision(manifest.name, manifest.path, "run", reason, manifest, images)
                )
            else:
                decisions.append(keep(f"waiting for its rollout wave: {wave.reason}"))
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
