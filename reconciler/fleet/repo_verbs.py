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

from reconciler import model, text
from reconciler.adapters import checkout, sigstore_verifier
from reconciler.core import desired, inventory, labels, manifests, release
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
    """Print every problem of the fleet repo, one line each; 0 when there are none, 1 otherwise.

    Judges HEAD's committed files, read from Git objects as devices read them (devices only
    ever see commits); work-tree edits not committed yet are named on `err`, not judged.
    Outside Git, the files on disk are judged, and `err` says so.
    """
    out, err = out or sys.stdout, err or sys.stderr
    if not root.is_dir():
        print(f"validate: {_safe(str(root))}: not a directory", file=err)
        return 2
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        print(
            "warning: not a Git work tree with a commit: validated the files on disk; "
            "devices read only committed files",
            file=err,
        )
        files, problems = checkout.manifest_files(root)
    else:
        files, problems = snapshot.manifest_files()
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
            if snapshot is None:
                data = checkout.read_optional(root, rel, limit=release.MAX_BYTES + 1)
            else:
                data = snapshot.read(rel, limit=release.MAX_BYTES)
            if data is not None:
                check(data)
        except ProblemsError as exc:
            problems += exc.problems
    if snapshot is not None:
        bundle = snapshot.problem(release.BUNDLE_PATH, limit=sigstore_verifier.MAX_BUNDLE_BYTES)
        problems += [bundle] if bundle is not None else []
        read = [*files, *_present(snapshot, [INVENTORY_PATH, *_FLEET_FILES])]
        problems += snapshot.transformed(read)
    # Sorted by file (stable, so each file's problems keep their order) for reading in CI logs.
    problems = sorted(problems, key=lambda p: p.file)
    _print_problems(problems, out=out)
    if snapshot is not None:
        _warn_uncommitted(root, snapshot, err=err)
    if problems:
        count = len({p.file for p in problems})
        print(f"validate: {len(problems)} problem(s) in {count} file(s)", file=out)
        return 1
    print(f"validate: {len(apps)} app manifest(s) valid", file=out)
    return 0


_FLEET_FILES = (release.RELEASE_PATH, release.BUNDLE_PATH)


def _present(snapshot: checkout.Snapshot, rels: Iterable[str]) -> list[str]:
    return [rel for rel in rels if snapshot.entry(rel) is not None]


def _warn_uncommitted(root: Path, snapshot: checkout.Snapshot, *, err: TextIO) -> None:
    """Name the work-tree changes `validate` did not judge: devices read only commits."""
    changed = [
        path
        for path in checkout.work_tree_changes(root, [checkout.APPS_DIR, INVENTORY_PATH])
        if manifests.is_manifest_path(path) or path == INVENTORY_PATH
    ]
    if not changed:
        return
    print(
        f"warning: {len(changed)} file(s) differ from the commit validated "
        f"(HEAD {snapshot.commit[:12]}); devices read only commits, so these edits were not "
        "validated: commit them and run validate again",
        file=err,
    )
    for line in checkout.lines_of(changed):
        print(f"  {_safe(line)}", file=err)


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
    previous = _apps_of_release(root, last, known=apps, err=err) if last else []
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
            print(text.escape(line.rstrip()), file=out)  # values were validated
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


def _apps_of_release(
    root: Path,
    last: release.Release,
    *,
    known: Sequence[model.AppManifest],
    err: TextIO,
) -> list[model.AppManifest]:
    """The manifests the last release pinned, read at its source commit (or HEAD, or the work
    tree, wherever the bytes still match the pin). Ones found nowhere are warned about and left
    out, so their devices show them as new rather than guessing what they ran.

    Each commit is listed once and its blobs read through one `git cat-file --batch`, so a
    release pinning thousands of apps costs a handful of git processes, not two per app. A pin
    whose bytes are those of a `known` manifest (the work tree's, parsed already) reuses it:
    parsing is most of plan's time, and unchanged apps are most of a fleet.
    """
    wanted = {path: pin.sha256 for path, pin in last.apps}
    files: dict[str, bytes] = {}
    # A release made from a dirty tree and committed with it holds its bytes at HEAD instead.
    snapshots = [checkout.Snapshot.at(root, rev) for rev in (last.source_commit, "HEAD")]
    seen: set[str] = set()
    for snapshot in snapshots:
        if snapshot is None or snapshot.commit in seen:
            continue
        seen.add(snapshot.commit)
        missing = [path for path in wanted if path not in files]
        # Symlinks and oversized blobs there are no match: their problems are not reported.
        found, _problems = snapshot.read_many(missing, limit=checkout.MANIFEST_LIMIT)
        files.update((p, d) for p, d in found.items() if release.digest(d) == wanted[p])
    for path in (path for path in wanted if path not in files):
        with contextlib.suppress(ProblemsError):  # a symlink there is no match either
            data = checkout.read_optional(root, path)
            if data is not None and release.digest(data) == wanted[path]:
                files[path] = data
    for path in (path for path in wanted if path not in files):
        print(
            f"warning: {_safe(path)}: pinned by release {last.version}, but its bytes are "
            "neither at its source commit, at HEAD nor in the work tree; planned as if new",
            file=err,
        )
    reuse = {(m.path, m.revision): m for m in known}
    parsed = {p: reuse[(p, wanted[p])] for p in files if (p, wanted[p]) in reuse}
    fresh, problems = manifests.parse_many({p: d for p, d in files.items() if p not in parsed})
    parsed.update((m.path, m) for m in fresh)
    apps: list[model.AppManifest] = []
    owner: dict[str, str] = {}
    for path in sorted(parsed):  # one app per name, as `manifests.parse_many` decides
        manifest = parsed[path]
        if manifest.name in owner:
            message = f'duplicate app name "{manifest.name}" (also in {owner[manifest.name]})'
            problems.append(Problem(path, "metadata.name", message))
            continue
        owner[manifest.name] = path
        apps.append(manifest)
    for problem in problems:
        print(
            f"warning: release {last.version} pins an invalid manifest: {_safe(str(problem))}",
            file=err,
        )
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
    """Build `.fleet/release.json` from HEAD's committed files and write it; (exit code, bytes).

    The pins are the sha256 of the committed blobs, read from Git objects exactly as devices
    read them. Nothing is written when any manifest, or the previous (committed) release, is
    invalid or unreadable to a device (symlink, submodule, over its size limit, rewritten by
    `.gitattributes`), or when manifests differ between the work tree and HEAD: a release
    must only ever pin bytes devices get, and its version must follow the previous one.
    """
    out, err = out or sys.stdout, err or sys.stderr
    now = now or datetime.now(UTC)
    if not (root / checkout.APPS_DIR).is_dir():
        print(f"release: {_safe(str(root))}: no apps/ directory; not a fleet repo", file=err)
        return 2, None
    if expires_in < 1:
        print("release: --expires-in must be at least 1s", file=err)
        return 2, None
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        print(
            f"release: {_safe(str(root))}: not a Git work tree with a commit; devices read "
            "committed files only: commit the fleet repo, then release",
            file=err,
        )
        return 2, None
    files, problems = snapshot.manifest_files()
    problems += manifests.parse_many(files)[1]
    problems += snapshot.transformed([*files, *_FLEET_FILES])
    for path in checkout.work_tree_changes(root, [checkout.APPS_DIR]):
        if manifests.is_manifest_path(path):
            problems.append(
                Problem(
                    path,
                    "",
                    f"differs from HEAD {snapshot.commit[:12]} in the work tree (not committed); "
                    "a release pins committed bytes only: commit it, then release",
                )
            )
    previous = None
    try:
        data = snapshot.read(release.RELEASE_PATH, limit=release.MAX_BYTES)
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
    named = {p.file for p in problems}  # a committed symlink is also one in the work tree
    problems += [p for p in target_problems(root) if p.file not in named]
    built = None
    if not problems:
        try:
            built = release.build(
                files,
                previous=previous,
                now=now,
                source_commit=snapshot.commit,
                expires_in=expires_in,
                images=images,
            )
        except ProblemsError as exc:
            problems += exc.problems
        except OverflowError:
            print("release: --expires-in is too far in the future", file=err)
            return 2, None
    if built is None:
        _print_problems(_unique(sorted(problems, key=lambda p: p.file)), out=out)
        print("release: nothing written", file=out)
        return 1, None
    data = release.serialize(built)
    try:
        checkout.replace_file(root, release.RELEASE_PATH, data)
    except (OSError, ProblemsError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"release: cannot write {release.RELEASE_PATH}: {_safe(str(reason))}", file=err)
        return 1, None
    if not files:
        print("warning: the release pins no apps: devices will remove every app", file=err)
    print(
        f"release {built.version}: {len(files)} app(s), commit {built.source_commit[:12]}, "
        f"expires {_time(built.expires)}, written to {release.RELEASE_PATH}",
        file=out,
    )
    return 0, data


def target_problems(root: Path) -> list[Problem]:
    """Why `release` must not write `.fleet/release.json` or its bundle in the work tree: a
    symlink at either or at `.fleet/` (the write would land outside the repo), or something
    that is not a regular file there."""
    problems = []
    for rel in _FLEET_FILES:
        problem = checkout.link_problem(root, rel)
        path = root / rel
        if problem is None and path.exists() and not path.is_file():
            problem = Problem(rel, "", "is not a regular file in the work tree")
        if problem is not None and problem not in problems:
            problems.append(problem)
    return problems


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# --- output helpers --------------------------------------------------------------------------


def _print_problems(problems: Iterable[Problem], *, out: TextIO) -> None:
    for problem in problems:
        print(_safe(str(problem)), file=out)


def _safe(untrusted: str) -> str:
    """One printable, bounded line: file names and values may hold newlines or escapes."""
    return text.one_line(untrusted)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
