"""`release [REPO]` (SPEC 3.3): writes `.fleet/release.json`, the snapshot devices pin.

Shell: builds the release with the pure `release.build` from HEAD's committed files (read through
`checkout` exactly as devices read them), carrying `.fleet/rollout.yaml`'s paused and aborted
apps into their entries (`rollout_file`), and writes it; refuses while manifests differ from HEAD
or anything is unreadable to a device. It never signs: `cli` then calls
`signing.sign_written_release`. Returns (exit code, the bytes written).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler.adapters import checkout
from reconciler.core import manifests, release
from reconciler.errors import Problem, ProblemsError
from reconciler.fleet import rollout_file
from reconciler.fleet.printing import print_problems, safe, utc_time

# The files `release` writes (and devices read) besides the manifests.
FLEET_FILES = (release.RELEASE_PATH, release.BUNDLE_PATH)


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
        print(f"release: {safe(str(root))}: no apps/ directory; not a fleet repo", file=err)
        return 2, None
    if expires_in < 1:
        print("release: --expires-in must be at least 1s", file=err)
        return 2, None
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        print(
            f"release: {safe(str(root))}: not a Git work tree with a commit; devices read "
            "committed files only: commit the fleet repo, then release",
            file=err,
        )
        return 2, None
    files, problems = snapshot.manifest_files()
    apps, manifest_problems = manifests.parse_many(files)
    problems += manifest_problems
    controls = rollout_file.release_controls(snapshot, apps)
    problems += controls.problems
    control_file = [rollout_file.PATH] if snapshot.entry(rollout_file.PATH) else []
    problems += snapshot.transformed([*files, *FLEET_FILES, *control_file])
    for path in checkout.work_tree_changes(root, [rollout_file.PATH]):
        problems.append(
            Problem(
                path,
                "",
                f"differs from HEAD {snapshot.commit[:12]} in the work tree (not committed); "
                "a release carries committed rollout control only: commit it, then release",
            )
        )
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
                paused=controls.paused,
                abort=controls.abort,
            )
        except ProblemsError as exc:
            problems += exc.problems
        except OverflowError:
            print("release: --expires-in is too far in the future", file=err)
            return 2, None
    if built is None:
        print_problems(_unique(sorted(problems, key=lambda p: p.file)), out=out)
        print("release: nothing written", file=out)
        return 1, None
    data = release.serialize(built)
    try:
        checkout.replace_file(root, release.RELEASE_PATH, data)
    except (OSError, ProblemsError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"release: cannot write {release.RELEASE_PATH}: {safe(str(reason))}", file=err)
        return 1, None
    if not files:
        print("warning: the release pins no apps: devices will remove every app", file=err)
    print(
        f"release {built.version}: {len(files)} app(s), commit {built.source_commit[:12]}, "
        f"expires {utc_time(built.expires)}, written to {release.RELEASE_PATH}",
        file=out,
    )
    for path, pin in built.apps:
        if pin.paused:
            print(f"  {safe(path)}: paused (from {rollout_file.PATH})", file=out)
        if pin.abort is not None:
            print(f"  {safe(path)}: aborts revision {pin.abort[:12]}", file=out)
    return 0, data


def target_problems(root: Path) -> list[Problem]:
    """Why `release` must not write `.fleet/release.json` or its bundle in the work tree: a
    symlink at either or at `.fleet/` (the write would land outside the repo), or something
    that is not a regular file there."""
    problems = []
    for rel in FLEET_FILES:
        problem = checkout.link_problem(root, rel)
        path = root / rel
        if problem is None and path.exists() and not path.is_file():
            problem = Problem(rel, "", "is not a regular file in the work tree")
        if problem is not None and problem not in problems:
            problems.append(problem)
    return problems


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
