"""What the last release ran, for `plan`'s "before": the committed release and the manifests
it pinned, read back from Git wherever their bytes still match the pins.

Shell over `checkout` (Git objects, work tree) and the pure `release` and `manifests`; what
cannot be found or parsed is warned about on `err` and left out, never guessed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from reconciler import model
from reconciler.adapters import checkout
from reconciler.core import manifests, release
from reconciler.errors import Problem, ProblemsError
from reconciler.fleet.printing import safe, utc_time


def read_last_release(root: Path, *, err: TextIO) -> tuple[release.Release | None, str]:
    """The committed release, or None (warned about when unusable); and how the header names it."""
    path = release.RELEASE_PATH
    try:
        data = checkout.read_optional(root, path, limit=release.MAX_BYTES + 1)
        last = release.parse(data) if data is not None else None
    except ProblemsError as exc:
        for problem in exc.problems:
            print(f"warning: {safe(str(problem))}", file=err)
        print(f"warning: {path} is unusable; planning as if there were no release", file=err)
        return None, f"no release ({path} is unusable): every selected app is new"
    if last is None:
        return None, f"no release yet ({path} not found): every selected app is new"
    commit = safe(last.source_commit[:12]) or "unknown"
    return last, f"release {last.version} (commit {commit}, created {utc_time(last.created)})"


def apps_of_release(
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
            f"warning: {safe(path)}: pinned by release {last.version}, but its bytes are "
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
            f"warning: release {last.version} pins an invalid manifest: {safe(str(problem))}",
            file=err,
        )
    return apps
