"""`plan [REPO]` (SPEC 3.3): which apps, revisions and images each device would get, and what
changes against the last release.

Shell: reads the work tree's manifests through `checkout` and the last release through
`last_release`, asks the pure `desired.decide` what each device runs before and after, and prints
one table per device. It never decides what runs where by itself. Needs no engine and no
network. Returns 0, 1 when the manifests are invalid, 2 bad usage; output goes to `out` and
warnings to `err`, resolved at call time so callers can capture them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import model, text
from reconciler.adapters import checkout
from reconciler.core import desired, manifests, release, rollout_control
from reconciler.errors import Problem, ProblemsError
from reconciler.fleet import rollout_file
from reconciler.fleet.devices import Device
from reconciler.fleet.last_release import apps_of_release, read_last_release
from reconciler.fleet.printing import print_problems, safe, utc_time

LEGEND = (
    "legend: + new  ~ changed  = unchanged  - removed  ! waiting for its rollout wave or paused  "
    "x aborted; revisions are the manifest's sha256 (12 digits)"
)
_IMAGES_WIDTH = 48  # wider image lists push the note right instead of padding every line


@dataclass(frozen=True)
class _Row:
    """One app on one device, as `plan` prints it."""

    mark: str
    app: str
    revision: str
    status: str
    images: str = ""
    note: str = ""


def plan(
    root: Path,
    *,
    devices: Sequence[Device],
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """For each device: the apps, revisions and images it would run, against the last release.

    Before: the manifests the release pinned (read at its `source_commit`), decided at `now`.
    After: the work tree's manifests; unchanged apps keep their release `since`, changed ones
    start their rollout at `now`, and a device outside an open wave stays on what it ran.
    """
    out, err = out or sys.stdout, err or sys.stderr
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if not root.is_dir():
        print(f"plan: {safe(str(root))}: not a directory", file=err)
        return 2
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    if problems:
        print_problems(problems, out=out)
        print("plan: fix the manifests first (reconciler validate)", file=out)
        return 1
    paused, aborts, control_problems = _work_tree_controls(root, apps, err=err)
    if control_problems:
        print_problems(control_problems, out=out)
        print(f"plan: fix {rollout_file.PATH} first (reconciler validate)", file=out)
        return 1
    last, against = read_last_release(root, err=err)
    previous = apps_of_release(root, last, known=apps, err=err) if last else []
    pins = last.pins if last else {}
    # A pin carries over only while the manifest's bytes are unchanged (as `release` does).
    same = {a.path for a in apps if a.path in pins and pins[a.path].sha256 == a.revision}
    since = {path: pins[path].since for path in same}
    images = {path: dict(pins[path].images) for path in same if pins[path].images}
    print(f"plan for the work tree of {safe(str(root))} at {utc_time(now)}", file=out)
    print(f"against {against}", file=out)
    print(LEGEND, file=out)
    tables = []
    for device in devices:
        before = desired.decide(
            previous,
            labels=device.labels,
            device_name=device.name,
            now=now,
            since=last.since if last else {},
            pinned_images=last.pinned_images if last else {},
            paused={path for path, pin in pins.items() if pin.paused},
            aborts={path: pin.abort for path, pin in pins.items() if pin.abort},
        )
        running = {d.app: d.manifest.revision for d in before if d.decision == "run"}
        after = desired.decide(
            apps,
            labels=device.labels,
            device_name=device.name,
            now=now,
            since=since,
            pinned_images=images,
            running=running,
            paused=paused,
            aborts=aborts,
        )
        tables.append((device, *_rows(after, {d.app: d for d in before}, last)))
    _print_tables(tables, out=out)
    changing = sum(1 for _, rows, _ in tables if any(r.mark in "+~-" for r in rows))
    print(f"plan: {len(tables)} device(s), {changing} with changes", file=out)
    return 0


def _rows(
    after: Sequence[desired.AppDecision],
    before: Mapping[str, desired.AppDecision],
    last: release.Release | None,
) -> tuple[list[_Row], list[str]]:
    """The rows of one device and the names of the apps not selected there."""
    rows: list[_Row] = []
    not_selected: list[str] = []
    older = f"an older revision than release {last.version}" if last else "an older revision"
    for d in after:
        was = before.get(d.app)
        was_here = was is not None and was.decision != "skip"
        revision, wave = d.manifest.revision[:12], _wave_note(d)
        if d.decision == "skip":
            if was is not None and was_here:
                old = was.manifest.revision[:12] if was.decision == "run" else "-"
                rows.append(_Row("-", d.app, old, "removed", note="selector no longer matches"))
            else:
                not_selected.append(d.app)
        elif d.decision in ("revert", "remove"):
            rows.append(
                _Row(
                    "x",
                    d.app,
                    (d.kept_revision or d.manifest.revision)[:12],
                    "aborted",
                    note=f"revision {(was.manifest.revision if was else revision)[:12]} is "
                    "aborted: a device running it returns to its previous revision (or "
                    "removes the app when it has none)",
                )
            )
        elif d.decision == "keep" and d.waiting in ("paused", "aborted"):
            kept = d.kept_revision[:12] if d.kept_revision else "-"
            note = (
                f"new revision {revision} is paused: devices not on it keep what they run"
                if d.waiting == "paused"
                else f"revision {revision} is aborted: devices that never took it never will"
            )
            rows.append(
                _Row("!" if d.waiting == "paused" else "x", d.app, kept, d.waiting, "", note)
            )
        elif d.decision == "keep":
            if d.kept_revision is not None and was is not None:
                note = f"new revision {revision} is {d.reason}"
                rows.append(
                    _Row("!", d.app, d.kept_revision[:12], "waiting", _images(was.images), note)
                )
            else:
                first = f"stays on {older}; {revision}" if was_here else f"new app {revision}"
                rows.append(_Row("!", d.app, "-", "waiting", "", f"{first} is {d.reason}"))
        elif was is None or not was_here:
            note = "selector now matches" if was is not None else "new app"
            rows.append(_Row("+", d.app, revision, "new", _images(d.images), note + wave))
        elif was.decision == "keep" or was.manifest.revision != d.manifest.revision:
            old = was.manifest.revision[:12] if was.decision == "run" else older
            rows.append(
                _Row("~", d.app, revision, "changed", _images(d.images), f"was {old}{wave}")
            )
        else:
            rows.append(_Row("=", d.app, revision, "unchanged", _images(d.images)))
    remaining = {d.app for d in after}
    for name in sorted(set(before) - remaining):
        was = before[name]
        if was.decision != "skip":
            old = was.manifest.revision[:12] if was.decision == "run" else "-"
            rows.append(_Row("-", name, old, "removed", note="no longer in the repo"))
    rows.sort(key=lambda r: r.app)
    return rows, not_selected


def _work_tree_controls(
    root: Path, apps: Sequence[model.AppManifest], *, err: TextIO
) -> tuple[set[str], dict[str, str], list[Problem]]:
    """The work tree's `.fleet/rollout.yaml` as the next release would sign it: paused paths
    and path -> aborted full revision, or the problems that stop it."""
    try:
        data = checkout.read_optional(root, rollout_file.PATH)
    except ProblemsError as exc:  # a link or a directory: as with release.json, plan without it
        for unreadable in exc.problems:
            print(f"plan: warning: {unreadable}; planned without it", file=err)
        data = None
    try:
        controls = rollout_control.parse(data)
    except ProblemsError as exc:
        return set(), {}, list(exc.problems)
    by_name = {app.name: app for app in apps}
    paused: set[str] = set()
    aborts: dict[str, str] = {}
    problems: list[Problem] = []
    for name, control in controls.items():
        app = by_name.get(name)
        if app is None:
            problems.append(Problem(rollout_file.PATH, f"apps.{name}", f'no app named "{name}"'))
            continue
        if control.paused:
            paused.add(app.path)
        if control.abort is not None:
            full, why = rollout_file.resolve(root, app, control.abort)
            if why is not None:
                problems.append(Problem(rollout_file.PATH, f"apps.{name}.abort", why))
            else:
                aborts[app.path] = full
    return paused, aborts, problems


def _wave_note(decision: desired.AppDecision) -> str:
    # `desired` appends the wave's verdict to the reason only for apps with waves.
    _, sep, verdict = decision.reason.partition("; ")
    return f"; {verdict}" if sep and decision.manifest.waves else ""


def _images(images: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{container}={image}" for container, image in images)


def _print_tables(tables: Sequence[tuple[Device, list[_Row], list[str]]], *, out: TextIO) -> None:
    every = [row for _, rows, _ in tables for row in rows]
    app_w = max((len(r.app) for r in every), default=0)
    rev_w = max((len(r.revision) for r in every), default=0)
    status_w = max((len(r.status) for r in every), default=0)
    images_w = min(max((len(r.images) for r in every), default=0), _IMAGES_WIDTH)
    if not tables:
        print("(no devices to plan for)", file=out)
    for device, rows, not_selected in tables:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "no labels"
        print(f"\ndevice {device.name}: {safe(shown)}", file=out)
        for r in rows:
            note = f"  ({r.note})" if r.note else ""
            line = (
                f"  {r.mark} {r.app:<{app_w}}  {r.revision:<{rev_w}}  {r.status:<{status_w}}  "
                f"{r.images:<{images_w}}{note}"
            )
            print(text.escape(line.rstrip()), file=out)  # values were validated
        if not_selected:
            print(f"    not selected: {', '.join(not_selected)}", file=out)
        elif not rows:
            print("    (no apps)", file=out)
    print(file=out)
