"""The verbs that run on a fleet repo checkout: `validate`, `plan`, `release` (SPEC 3.3).

Shell: reads the checkout through `checkout`, calls the pure core (`manifests`, `inventory`,
`release`, `desired`), prints. Needs no engine and no network, so pull-request checks run them
anywhere. Returns exit codes (0 ok, 1 invalid input, 2 bad usage); `cli` maps arguments. Output
goes to `out` (results) and `err` (warnings), resolved at call time so callers can capture them.
It never signs (that is `signatures`) and never decides what runs where by itself (`desired`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import checkout, desired, inventory, labels, manifests, model, release
from reconciler.errors import Problem, ProblemsError

INVENTORY_PATH = inventory.PATH
LEGEND = (
    "legend: + new  ~ changed  = unchanged  - removed  ! waiting for its rollout wave; "
    "revisions are the manifest's sha256 (12 digits)"
)
_IMAGES_WIDTH = 48  # wider image lists push the note right instead of padding every line


@dataclass(frozen=True)
class Device:
    """A device to plan for: its name (seeds rollout buckets) and labels (match selectors)."""

    name: str
    labels: Mapping[str, str]

    def __post_init__(self) -> None:
        if problem := labels.dns_label_error(self.name):
            raise ValueError(f"device name {problem}")


# --- validate --------------------------------------------------------------------------------


def validate(root: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print every problem of the checkout, one line each; 0 when there are none, 1 otherwise."""
    out, err = out or sys.stdout, err or sys.stderr
    if not root.is_dir():
        print(f"validate: {_safe(str(root))}: not a directory", file=err)
        return 2
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    # What `release` would refuse (paths devices cannot read back) fails the pull request too.
    problems += _release_build_problems(files)
    # The other files devices or previews read: a hand edit that breaks them fails here too.
    others: tuple[tuple[str, Callable[[bytes], object]], ...] = (
        (INVENTORY_PATH, lambda data: inventory.parse(data, path=INVENTORY_PATH)),
        (release.RELEASE_PATH, release.parse),
    )
    for rel, check in others:
        try:
            data = checkout.read_optional(root, rel, limit=release.MAX_BYTES + 1)
            if data is not None:
                check(data)
        except ProblemsError as exc:
            problems += exc.problems
    # Sorted by file (stable, so each file's problems keep their order) for reading in CI logs.
    problems = sorted(problems, key=lambda p: p.file)
    _print_problems(problems, out=out)
    if problems:
        count = len({p.file for p in problems})
        print(f"validate: {len(problems)} problem(s) in {count} file(s)", file=out)
        return 1
    print(f"validate: {len(apps)} app manifest(s) valid", file=out)
    return 0


def _release_build_problems(files: Mapping[str, bytes]) -> list[Problem]:
    """What `release` would refuse about each file (its path), named by that file."""
    found = []
    for path, data in files.items():
        try:
            release.build({path: data}, previous=None, now=datetime.now(UTC), source_commit="")
        except ProblemsError as exc:
            found += [Problem(path, "", p.message) for p in exc.problems]
    return found


# --- plan ------------------------------------------------------------------------------------


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
        print(f"plan: {_safe(str(root))}: not a directory", file=err)
        return 2
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    if problems:
        _print_problems(problems, out=out)
        print("plan: fix the manifests first (reconciler validate)", file=out)
        return 1
    last, against = _last_release(root, err=err)
    previous = _apps_of_release(root, last, err=err) if last else []
    pins = last.pins if last else {}
    # A pin carries over only while the manifest's bytes are unchanged (as `release` does).
    same = {a.path for a in apps if a.path in pins and pins[a.path].sha256 == a.revision}
    since = {path: pins[path].since for path in same}
    images = {path: dict(pins[path].images) for path in same if pins[path].images}
    print(f"plan for the work tree of {_safe(str(root))} at {_time(now)}", file=out)
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
        print(f"\ndevice {device.name}: {_safe(shown)}", file=out)
        for r in rows:
            note = f"  ({r.note})" if r.note else ""
            line = (
                f"  {r.mark} {r.app:<{app_w}}  {r.revision:<{rev_w}}  {r.status:<{status_w}}  "
                f"{r.images:<{images_w}}{note}"
            )
            print(_safe(line.rstrip()), file=out)
        if not_selected:
            print(f"    not selected: {', '.join(not_selected)}", file=out)
        elif not rows:
            print("    (no apps)", file=out)
    print(file=out)


def _last_release(root: Path, *, err: TextIO) -> tuple[release.Release | None, str]:
    """The committed release, or None (warned about when unusable); and how the header names it."""
    path = release.RELEASE_PATH
    try:
        data = checkout.read_optional(root, path, limit=release.MAX_BYTES + 1)
        last = release.parse(data) if data is not None else None
    except ProblemsError as exc:
        for problem in exc.problems:
            print(f"warning: {_safe(str(problem))}", file=err)
        print(f"warning: {path} is unusable; planning as if there were no release", file=err)
        return None, f"no release ({path} is unusable): every selected app is new"
    if last is None:
        return None, f"no release yet ({path} not found): every selected app is new"
    commit = _safe(last.source_commit[:12]) or "unknown"
    return last, f"release {last.version} (commit {commit}, created {_time(last.created)})"


def _apps_of_release(root: Path, last: release.Release, *, err: TextIO) -> list[model.AppManifest]:
    """The manifests the last release pinned, read at its source commit (or HEAD, or the work
    tree, wherever the bytes still match the pin). Ones found nowhere are warned about and left
    out, so their devices show them as new rather than guessing what they ran."""
    files: dict[str, bytes] = {}
    # A release made from a dirty tree and committed with it holds its bytes at HEAD instead.
    commits = dict.fromkeys(c for c in (last.source_commit, checkout.head_commit(root)) if c)
    for path, pin in last.apps:
        found = [checkout.file_at_commit(root, commit, path) for commit in commits]
        with contextlib.suppress(ProblemsError):  # a symlink there is no match either
            found.append(checkout.read_optional(root, path))
        data = next((d for d in found if d is not None and release.digest(d) == pin.sha256), None)
        if data is None:
            print(
                f"warning: {_safe(path)}: pinned by release {last.version}, but its bytes are "
                "neither at its source commit, at HEAD nor in the work tree; planned as if new",
                file=err,
            )
            continue
        files[path] = data
    apps, problems = manifests.parse_many(files)
    for problem in problems:
        print(f"warning: release {last.version} pins an invalid manifest: {problem}", file=err)
    return apps


def parse_label_list(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as given to `plan --labels`; raises ValueError naming the bad item."""
    result: dict[str, str] = {}
    if not text.strip():
        return result
    # As Kubernetes' selector syntax: an empty item ("a=b,", ",") is an error, not "no labels".
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f'--labels: empty item in "{_safe(text)}"; expected key=value,...')
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f'--labels: expected key=value, got "{_safe(item)}"')
        if problem := labels.label_key_error(key) or labels.label_value_error(value):
            raise ValueError(f"--labels: {_safe(problem)}")
        if key in result:
            raise ValueError(f'--labels: "{_safe(key)}" is given twice')
        result[key] = value
    return result


def inventory_devices(path: Path) -> list[Device]:
    """Devices of an inventory file (`devices/inventory.yaml` shape); raises ProblemsError."""
    name = str(path)
    try:
        data = checkout.read_capped(path, release.MAX_BYTES + 1)
    except OSError as exc:
        raise ProblemsError([Problem(name, "", f"cannot be read: {exc.strerror or exc}")]) from None
    return [Device(d.name, dict(d.labels)) for d in inventory.parse(data, path=name)]


# --- release ---------------------------------------------------------------------------------


def write_release(
    root: Path,
    *,
    now: datetime | None = None,
    expires_in: float,
    images: Mapping[str, Mapping[str, str]] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> tuple[int, bytes | None]:
    """Build and write `.fleet/release.json` from the checkout; returns (exit code, bytes).

    Nothing is written when any manifest, or the previous release, is invalid: a release must
    only ever pin what devices accept, and its version must follow the previous one.
    """
    out, err = out or sys.stdout, err or sys.stderr
    now = now or datetime.now(UTC)
    if not (root / checkout.APPS_DIR).is_dir():
        print(f"release: {_safe(str(root))}: no apps/ directory; not a fleet repo", file=err)
        return 2, None
    if expires_in < 1:
        print("release: --expires-in must be at least 1s", file=err)
        return 2, None
    files, problems = checkout.manifest_files(root)
    problems += manifests.parse_many(files)[1]
    previous = None
    try:
        data = checkout.read_optional(root, release.RELEASE_PATH, limit=release.MAX_BYTES + 1)
        previous = release.parse(data) if data is not None else None
    except ProblemsError as exc:
        problems += exc.problems
        problems.append(
            Problem(
                release.RELEASE_PATH,
                "",
                "fix it or restore it from Git; deleting it would restart versions at 1, "
                "which devices refuse as a rollback",
            )
        )
    built = None
    if not problems:
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
            problems += exc.problems
        except OverflowError:
            print("release: --expires-in is too far in the future", file=err)
            return 2, None
    if built is None:
        _print_problems(sorted(problems, key=lambda p: p.file), out=out)
        print("release: nothing written", file=out)
        return 1, None
    data = release.serialize(built)
    target = root / release.RELEASE_PATH
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(target)  # atomic: a reader never sees half a release
    except OSError as exc:
        print(f"release: cannot write {release.RELEASE_PATH}: {exc.strerror or exc}", file=err)
        return 1, None
    _warn_release(root, built, files, err=err)
    print(
        f"release {built.version}: {len(files)} app(s), commit {built.source_commit[:12] or '-'}, "
        f"expires {_time(built.expires)}, written to {release.RELEASE_PATH}",
        file=out,
    )
    return 0, data


def _warn_release(
    root: Path, built: release.Release, files: Mapping[str, bytes], *, err: TextIO
) -> None:
    if not built.source_commit:
        print("warning: not a Git work tree with a commit; source_commit is empty", file=err)
    for path in checkout.uncommitted(root, sorted(files)):
        print(
            f"warning: {_safe(path)}: not committed as is (HEAD is {built.source_commit[:12]}); "
            "commit it with the release, or devices refuse the release (sha256 mismatch)",
            file=err,
        )
    if not files:
        print("warning: the release pins no apps: devices will remove every app", file=err)


# --- output helpers --------------------------------------------------------------------------


def _print_problems(problems: Iterable[Problem], *, out: TextIO) -> None:
    for problem in problems:
        print(_safe(str(problem)), file=out)


def _safe(text: str) -> str:
    """One printable line: file names and values may hold newlines or terminal escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
