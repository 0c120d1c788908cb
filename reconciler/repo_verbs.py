"""The verbs that run on a fleet repo checkout: `validate`, `plan`, `release`.

Shell: reads the checkout through `checkout`, calls the pure core, prints. Needs no engine and no
network, so pull-request checks run them anywhere. Returns exit codes; `cli` maps arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import checkout, desired, inventory, manifests, model, release
from reconciler.errors import Problem, ProblemsError

INVENTORY_PATH = "devices/inventory.yaml"


def validate(root: Path, *, out: TextIO = sys.stdout) -> int:
    """Print every problem of every manifest, one per line; 0 when there are none."""
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    inventory_bytes = checkout.read_optional(root, INVENTORY_PATH)
    if inventory_bytes is not None:
        try:
            inventory.parse(inventory_bytes, path=INVENTORY_PATH)
        except ProblemsError as exc:
            problems += exc.problems
    for problem in problems:
        print(problem, file=out)
    if problems:
        print(f"{len(problems)} problem(s) in {root}", file=out)
        return 1
    print(f"{len(apps)} app manifest(s) valid", file=out)
    return 0


@dataclass(frozen=True)
class Device:
    name: str
    labels: Mapping[str, str]


def plan(
    root: Path,
    *,
    devices: Sequence[Device],
    now: datetime | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """For each device: the apps, revisions and images it would run, against the last release."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    if problems:
        for problem in problems:
            print(problem, file=out)
        print("plan: fix the manifests first (reconciler validate)", file=out)
        return 1
    last = _last_release(root, out=out)
    last_pins = last.pins if last else {}
    since = {
        app.path: last_pins[app.path].since
        for app in apps
        if app.path in last_pins and last_pins[app.path].sha256 == app.revision
    }
    previous_apps = _apps_of_release(root, last) if last else []
    pinned_images = {path: dict(pin.images) for path, pin in last_pins.items()}
    for device in devices:
        labels = dict(device.labels)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
        print(f"device {device.name} ({shown})", file=out)
        before = {
            d.app: d
            for d in desired.decide(
                previous_apps,
                labels=labels,
                device_name=device.name,
                now=now,
                since={p: pin.since for p, pin in last_pins.items()},
                pinned_images=pinned_images,
            )
            if d.decision == "run"
        }
        running = {name: d.manifest.revision for name, d in before.items()}
        after = desired.decide(
            apps,
            labels=labels,
            device_name=device.name,
            now=now,
            since=since,
            pinned_images={p: i for p, i in pinned_images.items() if p in since},
            running=running,
        )
        for decision in after:
            print(_describe(decision, before.get(decision.app)), file=out)
        for name in sorted(set(before) - {d.app for d in after if d.decision != "skip"}):
            if all(d.app != name for d in after):
                print(f"  - {name}: removed (no longer in the repo)", file=out)
        if not any(d.decision != "skip" for d in after) and not before:
            print("  (no apps)", file=out)
    return 0


def _describe(decision: desired.AppDecision, before: desired.AppDecision | None) -> str:
    revision = decision.manifest.revision[:12]
    if decision.decision == "skip":
        if before is not None:
            return f"  - {decision.app}: removed (selector no longer matches)"
        return f"    {decision.app}: not selected ({decision.reason})"
    if decision.decision == "keep":
        kept = (
            f"stays on {decision.kept_revision[:12]}"
            if decision.kept_revision
            else "gets nothing yet"
        )
        return f"  = {decision.app}: {kept}, {decision.reason}"
    if before is None:
        change = "+", "new"
    elif before.manifest.revision != decision.manifest.revision:
        change = "~", f"changed from {before.manifest.revision[:12]}"
    else:
        change = " ", "unchanged"
    images = ", ".join(f"{c}={image}" for c, image in decision.images)
    return f"  {change[0]} {decision.app} {revision} ({change[1]}) {decision.path}: {images}"


def _last_release(root: Path, *, out: TextIO) -> release.Release | None:
    data = checkout.read_optional(root, release.RELEASE_PATH, limit=release.MAX_BYTES + 1)
    if data is None:
        return None
    try:
        return release.parse(data)
    except ProblemsError as exc:
        for problem in exc.problems:
            print(f"warning: {problem}; planning as if there were no release", file=out)
        return None


def _apps_of_release(root: Path, last: release.Release) -> list[model.AppManifest]:
    """The manifests the last release pinned, read from its source commit (or the work tree when
    the bytes there still match the pin)."""
    apps = []
    for path, pin in last.pins.items():
        data = checkout.file_at_commit(root, last.source_commit, path)
        if data is None or release.digest(data) != pin.sha256:
            data = checkout.read_optional(root, path)
        if data is None or release.digest(data) != pin.sha256:
            continue
        try:
            apps.append(manifests.parse(data, path=path))
        except ProblemsError:
            continue
    return apps


def parse_label_list(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as given to `plan --labels`; raises ValueError naming the bad item."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f'--labels: expected key=value, got "{item}"')
        labels[key.strip()] = value.strip()
    return labels


def inventory_devices(path: Path) -> list[Device]:
    """Devices of an inventory file (`devices/inventory.yaml` shape)."""
    data = checkout.read_capped(path, release.MAX_BYTES + 1)
    return [Device(d.name, dict(d.labels)) for d in inventory.parse(data, path=str(path))]


def write_release(
    root: Path,
    *,
    now: datetime | None = None,
    expires_in: float,
    images: Mapping[str, Mapping[str, str]] | None = None,
    out: TextIO = sys.stdout,
) -> tuple[int, bytes | None]:
    """Build and write `.fleet/release.json` from the checkout; returns (exit code, bytes)."""
    now = now or datetime.now(UTC)
    files, problems = checkout.manifest_files(root)
    _apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    previous_bytes = checkout.read_optional(root, release.RELEASE_PATH, limit=release.MAX_BYTES + 1)
    previous = None
    if previous_bytes is not None:
        try:
            previous = release.parse(previous_bytes)
        except ProblemsError as exc:
            problems += exc.problems
    if problems:
        _print_problems(problems, out=out)
        print("release: nothing written", file=out)
        return 1, None
    try:
        built = release.build(
            files,
            previous=previous,
            now=now,
            source_commit=checkout.head_commit(root),
            expires_in=expires_in,
            images=images,
        )
    except ProblemsError as exc:
        _print_problems(exc.problems, out=out)
        print("release: nothing written", file=out)
        return 1, None
    data = release.serialize(built)
    target = root / release.RELEASE_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    print(
        f"release {built.version}: {len(files)} app(s), "
        f"expires {built.expires:%Y-%m-%dT%H:%M:%SZ}, written to {release.RELEASE_PATH}",
        file=out,
    )
    return 0, data


def _print_problems(problems: Sequence[Problem], *, out: TextIO) -> None:
    for problem in problems:
        print(problem, file=out)
