"""`.fleet/rollout.yaml` in a fleet repo checkout (SPEC 2.3): read from HEAD's committed blob
like the manifests, checked against the apps, and turned into what the release signs.

Shell over `checkout`, `revision_history` and the pure `rollout_control`. An entry must name
an app committed at HEAD; an abort's revision (a sha256 prefix of at least 12 hex digits) is
resolved to the full revision of that app: the newest one (HEAD's manifest) when it matches,
else any revision the app's manifest path held in HEAD's history (every version a release could
have pinned). No match, or a prefix matching two revisions, is a problem naming the entry; the
caller then writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler import model
from reconciler.adapters import checkout, revision_history
from reconciler.core import rollout_control, safe_yaml
from reconciler.errors import Problem, ProblemsError

PATH = rollout_control.PATH


@dataclass
class ReleaseControls:
    """What `release.build` takes: paused manifest paths and path -> full revision to abort."""

    paused: set[str] = field(default_factory=set)
    abort: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def read_committed(snapshot: checkout.Snapshot) -> dict[str, rollout_control.Control]:
    """HEAD's `.fleet/rollout.yaml`, parsed (empty when there is none); ProblemsError when a
    device-side reader would refuse it or it is invalid."""
    data = snapshot.read(PATH, limit=safe_yaml.MAX_BYTES)
    return rollout_control.parse(data, path=PATH)


def release_controls(
    snapshot: checkout.Snapshot, apps: Sequence[model.AppManifest]
) -> ReleaseControls:
    """The committed rollout control, checked against `apps` (HEAD's valid manifests)."""
    result = ReleaseControls()
    try:
        controls = read_committed(snapshot)
    except ProblemsError as exc:
        result.problems += exc.problems
        return result
    by_name = {app.name: app for app in apps}
    for name, control in controls.items():
        app = by_name.get(name)
        if app is None:
            result.problems.append(
                Problem(
                    PATH,
                    f"apps.{name}",
                    f'no app named "{name}" is committed under apps/ at HEAD: remove the entry '
                    "(or fix the name)",
                )
            )
            continue
        if control.paused:
            result.paused.add(app.path)
        if control.abort is not None:
            full, problem = resolve(snapshot.root, app, control.abort)
            if problem is not None:
                result.problems.append(Problem(PATH, f"apps.{name}.abort", problem))
            else:
                result.abort[app.path] = full
    return result


def resolve(root: Path, app: model.AppManifest, prefix: str) -> tuple[str, str | None]:
    """(full revision, None), or ("", why not) for a revision prefix of `app`."""
    if app.revision.startswith(prefix):
        return app.revision, None
    history = revision_history.revisions(root, app.path, limit=checkout.MANIFEST_LIMIT)
    matches = [revision for revision in history if revision.startswith(prefix)]
    if len(matches) == 1:
        return matches[0], None
    if matches:
        shown = ", ".join(m[:16] for m in matches[:5])
        return (
            "",
            f"{prefix} matches {len(matches)} revisions of {app.name} ({shown}): "
            "give more hex digits",
        )
    return "", (
        f"{prefix} is no revision of {app.name}: neither its newest ({app.revision[:12]}) nor "
        f"any of the {len(history)} version(s) of {app.path} in HEAD's history"
    )
