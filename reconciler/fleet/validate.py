"""`validate [REPO]` (SPEC 3.3): every problem of a fleet repo, as devices would meet it.

Shell: reads HEAD's committed files through `checkout` (work-tree edits are named, not judged),
parses them with the pure core (`manifests`, `inventory`, `release`, and `.fleet/rollout.yaml`
through `rollout_file`: names apps that exist, aborts a revision they had) and prints one line per
problem, sorted by file for CI logs. Needs no engine and no network, so pull-request checks run
it anywhere. Returns 0 valid, 1 invalid, 2 bad usage. Output goes to `out` (results) and `err`
(warnings), resolved at call time so callers can capture them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import model
from reconciler.adapters import checkout, sigstore_verifier
from reconciler.core import inventory, manifests, release, rollout_control
from reconciler.errors import Problem, ProblemsError
from reconciler.fleet import rollout_file
from reconciler.fleet.printing import print_problems, safe
from reconciler.fleet.release_verb import FLEET_FILES

INVENTORY_PATH = inventory.PATH


def validate(root: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print every problem of the fleet repo, one line each; 0 when there are none, 1 otherwise.

    Judges HEAD's committed files, read from Git objects as devices read them (devices only
    ever see commits); work-tree edits not committed yet are named on `err`, not judged.
    Outside Git, the files on disk are judged, and `err` says so.
    """
    out, err = out or sys.stdout, err or sys.stderr
    if not root.is_dir():
        print(f"validate: {safe(str(root))}: not a directory", file=err)
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
        problems += rollout_file.release_controls(snapshot, apps).problems
    else:
        problems += _work_tree_control_problems(root, apps)
    if snapshot is not None:
        bundle = snapshot.problem(release.BUNDLE_PATH, limit=sigstore_verifier.MAX_BUNDLE_BYTES)
        problems += [bundle] if bundle is not None else []
        read = [*files, *_present(snapshot, [INVENTORY_PATH, rollout_file.PATH, *FLEET_FILES])]
        problems += snapshot.transformed(read)
    # Sorted by file (stable, so each file's problems keep their order) for reading in CI logs.
    problems = sorted(problems, key=lambda p: p.file)
    print_problems(problems, out=out)
    if snapshot is not None:
        _warn_uncommitted(root, snapshot, err=err)
    if problems:
        count = len({p.file for p in problems})
        print(f"validate: {len(problems)} problem(s) in {count} file(s)", file=out)
        return 1
    print(f"validate: {len(apps)} app manifest(s) valid", file=out)
    return 0


def _present(snapshot: checkout.Snapshot, rels: Iterable[str]) -> list[str]:
    return [rel for rel in rels if snapshot.entry(rel) is not None]


def _warn_uncommitted(root: Path, snapshot: checkout.Snapshot, *, err: TextIO) -> None:
    """Name the work-tree changes `validate` did not judge: devices read only commits."""
    changed = [
        path
        for path in checkout.work_tree_changes(
            root, [checkout.APPS_DIR, INVENTORY_PATH, rollout_file.PATH]
        )
        if manifests.is_manifest_path(path) or path in (INVENTORY_PATH, rollout_file.PATH)
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
        print(f"  {safe(line)}", file=err)


def _work_tree_control_problems(root: Path, apps: Iterable[model.AppManifest]) -> list[Problem]:
    """Outside Git: the work tree's `.fleet/rollout.yaml` parsed, its app names checked (an
    abort prefix cannot be resolved without history)."""
    try:
        controls = rollout_control.parse(checkout.read_optional(root, rollout_file.PATH))
    except ProblemsError as exc:
        return list(exc.problems)
    names = {app.name for app in apps}
    return [
        Problem(rollout_file.PATH, f"apps.{name}", f'no app named "{name}" under apps/')
        for name in controls
        if name not in names
    ]


def _release_build_problems(files: Mapping[str, bytes]) -> list[Problem]:
    """What `release` would refuse about each file (its path), named by that file."""
    found = []
    for path, data in files.items():
        try:
            release.build({path: data}, previous=None, now=datetime.now(UTC), source_commit="")
        except ProblemsError as exc:
            found += [Problem(path, "", p.message) for p in exc.problems]
    return found
