"""`rollout pause|resume|abort APP [REPO]` and `rollout gate` (SPEC 3.3): edit
`.fleet/rollout.yaml` in a checkout's work tree; `reconciler release` then signs it.

Shell over `checkout` and the pure `rollout_control` (whose line editor keeps the file's comments
and other entries; when it cannot, the file is written anew and the verb says so). The edit is
idempotent: pausing a paused app changes nothing and says so. App names are checked against the
work tree's manifests; `abort` resolves its revision (default: the newest, i.e. the one the
checkout's release pins, else the work tree's manifest) to the full revision it writes.
`gate` pauses every app whose newest revision failed on more devices than allowed, from what
Prometheus reports (`status_verb.gather`). Exit codes: 0 done or unchanged, 1 error, 2 bad
usage, and for `gate` 10 when it changed the file.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from reconciler import model
from reconciler.adapters import checkout
from reconciler.core import manifests, release, rollout_control
from reconciler.core.fleet_status import Threshold
from reconciler.core.rollout_control import Control
from reconciler.errors import ProblemsError
from reconciler.fleet import rollout_file, status_verb
from reconciler.fleet.printing import print_problems, safe

EXIT_CHANGED = 10
PATH = rollout_control.PATH


def edit(
    root: Path,
    action: str,
    app: str,
    *,
    revision: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`pause`, `resume` or `abort` one app in the work tree's `.fleet/rollout.yaml`."""
    out, err = out or sys.stdout, err or sys.stderr
    verb = f"rollout {action}"
    if not (root / checkout.APPS_DIR).is_dir():
        print(f"{verb}: {safe(str(root))}: no apps/ directory; not a fleet repo", file=err)
        return 2
    try:
        current = rollout_control.parse(checkout.read_optional(root, PATH), path=PATH)
    except ProblemsError as exc:
        print_problems(exc.problems, out=err)
        print(f"{verb}: fix {PATH} first; nothing written", file=err)
        return 1
    apps = _work_tree_apps(root, err=err)
    if apps is None:
        return 1
    found = apps.get(app)
    if found is None and not (action == "resume" and app in current):
        known = ", ".join(sorted(apps)) or "none"
        print(f'{verb}: no app named "{safe(app)}" under apps/ (apps: {safe(known)})', file=err)
        return 1
    entry = current.get(app, Control())
    if action == "pause":
        wanted = Control(paused=True, abort=entry.abort)
    elif action == "resume":
        wanted = Control()
    else:
        assert found is not None
        full = _abort_revision(root, found, revision, err=err)
        if full is None:
            return 1
        wanted = Control(paused=entry.paused, abort=full)
    return _write(root, {app: wanted}, verb=verb, out=out, err=err)


def gate(
    root: Path,
    *,
    prometheus: str,
    threshold: Threshold,
    poll_interval: float = status_verb.DEFAULT_POLL_INTERVAL,
    lookback: str = status_verb.DEFAULT_LOOKBACK,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Pause each app whose newest revision failed on more devices than `threshold` allows."""
    out, err = out or sys.stdout, err or sys.stderr
    now = (now or datetime.now(UTC)).astimezone(UTC)
    try:
        current = rollout_control.parse(checkout.read_optional(root, PATH), path=PATH)
    except ProblemsError as exc:
        print_problems(exc.problems, out=err)
        print(f"rollout gate: fix {PATH} first; nothing written", file=err)
        return 1
    status = status_verb.gather(
        root,
        prometheus=prometheus,
        now=now,
        poll_interval=poll_interval,
        lookback=lookback,
        devices=None,
        threshold=threshold,
        err=err,
    )
    if status is None:
        return 1
    changes: dict[str, Control] = {}
    for app in status.apps:
        share = f"{app.failed} of {app.tried} device(s) that tried {app.revision[:12]}"
        entry = current.get(app.name, Control())
        if not app.over_limit:
            print(f"{safe(app.name)}: ok, failed on {share}", file=out)
        elif entry.paused or app.paused:
            print(f"{safe(app.name)}: failed on {share}; already paused", file=out)
        else:
            print(f"{safe(app.name)}: failed on {share}, over {threshold}: pausing", file=out)
            changes[app.name] = Control(paused=True, abort=entry.abort)
    if not changes:
        print("rollout gate: nothing to pause", file=out)
        return 0
    code = _write(root, changes, verb="rollout gate", out=out, err=err)
    return EXIT_CHANGED if code == 0 else code


def _write(root: Path, changes: dict[str, Control], *, verb: str, out: TextIO, err: TextIO) -> int:
    try:
        data = checkout.read_optional(root, PATH)
        changed = rewritten = False
        for app, control in changes.items():
            edited = rollout_control.edit(data, app, control, path=PATH)
            data = edited.data
            changed = changed or edited.changed
            rewritten = rewritten or edited.rewritten
        if not changed:
            print(f"{verb}: {PATH} already says so; unchanged", file=out)
            return 0
        assert data is not None
        checkout.replace_file(root, PATH, data)
    except ProblemsError as exc:
        print_problems(exc.problems, out=err)
        print(f"{verb}: nothing written", file=err)
        return 1
    except OSError as exc:
        print(f"{verb}: cannot write {PATH}: {safe(exc.strerror or str(exc))}", file=err)
        return 1
    if rewritten:
        print(
            f"warning: {PATH} was written anew (its layout was not one the editor keeps): "
            "its comments are gone",
            file=err,
        )
    for app, control in changes.items():
        what = _describe(control)
        print(f"{verb}: {safe(app)}: {what} in {PATH}", file=out)
    print(f"{verb}: commit {PATH}, then run reconciler release to sign it", file=out)
    return 0


def _describe(control: Control) -> str:
    if control.empty:
        return "resumed (entry removed)"
    parts = ["paused"] if control.paused else []
    if control.abort is not None:
        parts.append(f"aborting revision {control.abort[:12]}")
    return " and ".join(parts)


def _work_tree_apps(root: Path, *, err: TextIO) -> dict[str, model.AppManifest] | None:
    files, problems = checkout.manifest_files(root)
    apps, parse_problems = manifests.parse_many(files)
    problems += parse_problems
    if problems:
        print_problems(problems, out=err)
        print("fix the manifests first (reconciler validate); nothing written", file=err)
        return None
    return {app.name: app for app in apps}


def _abort_revision(
    root: Path, app: model.AppManifest, given: str | None, *, err: TextIO
) -> str | None:
    if given is None:
        pinned = _released_revision(root, app.path)
        return pinned or app.revision
    prefix = given.strip().lower()
    if not (rollout_control.MIN_PREFIX <= len(prefix) <= 64) or any(
        c not in "0123456789abcdef" for c in prefix
    ):
        print(
            f"rollout abort: --revision: expected a sha256 or a prefix of at least "
            f"{rollout_control.MIN_PREFIX} hex digits, got {safe(given)!r}",
            file=err,
        )
        return None
    pinned = _released_revision(root, app.path)
    if pinned is not None and pinned.startswith(prefix):
        return pinned
    full, problem = rollout_file.resolve(root, app, prefix)
    if problem is not None:
        print(f"rollout abort: --revision: {safe(problem)}", file=err)
        return None
    return full


def _released_revision(root: Path, path: str) -> str | None:
    """The revision of `path` the checkout's release pins (what devices were given), if any."""
    try:
        data = checkout.read_optional(root, release.RELEASE_PATH, limit=release.MAX_BYTES + 1)
        pins = release.parse(data).pins if data is not None else {}
    except ProblemsError:
        return None
    pin = pins.get(path)
    return pin.sha256 if pin else None
