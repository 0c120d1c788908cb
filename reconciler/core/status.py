"""What `reconciler status` shows: the saved state joined with what the engine reports.

Pure: `report()` builds a plain dict (the `--json` output) from the state, the observed
containers and volumes; `render()` turns it into lines a person reads at a glance on the device.
The engine part is optional: with the engine down, status still shows the saved state and says
why the containers are missing.

Where each line comes from. `last fetch`: an unchanged poll writes nothing to `state_dir`, so
the time of the last successful fetch lives in the running daemon (its
`reconciler_last_fetch_success_timestamp_seconds`, which the CLI reads from `metrics.listen`);
without an answering daemon the line shows when the head last moved, as saved in `state.json`,
and says so. `last error`: a full or read-only `state_dir` cannot record the error it causes,
so the CLI checks `state_dir` itself and that problem, naming the path, is the last error shown.
`config`: the CLI reads the same config and labels.d files as the daemon; when they are invalid
now, the running daemon kept its previous settings, and status says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler import model
from reconciler.core import state


def report(
    saved: state.DeviceState,
    *,
    device: str,
    state_dir: str,
    observed: Sequence[model.ObservedContainer] | None,
    volumes: Sequence[str] | None,
    engine_error: str | None = None,
    state_dir_error: str | None = None,
    fetched_by_daemon: str | None = None,
    config_error: str | None = None,
    hold: dict[str, Any] | None = None,
    maintenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document; `observed`/`volumes` are None when the engine could not be asked.

    `state_dir_error`: why state_dir cannot be written now (full, read-only); it is the last
    error then, as nothing newer could be saved. `fetched_by_daemon`: the running daemon's last
    successful fetch (ISO 8601 UTC), None when no daemon answered. `config_error`: why the
    config or a labels.d file cannot be loaded now. `hold`: the local hold
    (`{"active", "since", "until", "reason", "error"}`, None when there is none);
    `maintenance`: the windows (`{"windows", "timezone", "in_window", "next_open"}`, None when
    none are configured: any time).
    """
    by_app: dict[str, list[model.ObservedContainer]] = {}
    for container in observed or ():
        by_app.setdefault(container.app, []).append(container)
    apps = []
    for app in saved.apps:
        images = dict(app.images)
        apps.append(
            {
                "name": app.name,
                "path": app.path,
                "revision": app.revision,
                "containers": [
                    {
                        "name": c.container,
                        "engine_name": c.name,
                        "state": c.status,
                        "image": c.image,
                        "revision": c.revision,
                        "restart_count": c.restart_count,
                    }
                    for c in by_app.pop(app.name, [])
                ],
                "images": images,
            }
        )
    return {
        "device": device,
        "state_dir": state_dir,
        "release_version": saved.release_version,
        "commit": saved.commit,
        "applied_at": saved.applied_at,
        "last_fetch": fetched_by_daemon or saved.last_fetch,
        "last_fetch_source": (
            "daemon" if fetched_by_daemon else "state_dir" if saved.last_fetch else None
        ),
        "last_fetch_commit": saved.last_fetch_commit,
        "last_error": _last_error(saved.last_error, state_dir_error),
        "state_dir_error": state_dir_error,
        "config_error": config_error,
        "last_verification_failure": saved.last_verification_failure,
        "pending": None
        if saved.pending is None
        else {
            "release_version": saved.pending.release_version,
            "commit": saved.pending.commit,
            "started_at": saved.pending.started_at,
        },
        "apps": apps,
        "previous_apps": [{"name": a.name, "revision": a.revision} for a in saved.previous_apps],
        "held_back": [state.held_back_doc(h) for h in saved.held_back],
        "pending_revisions": [state.waiting_doc(w) for w in saved.waiting],
        "hold": hold,
        "maintenance": maintenance,
        # Managed containers of apps not in the applied state (e.g. pruned by the next cycle).
        "other_containers": [
            {"app": c.app, "name": c.container, "state": c.status}
            for containers in by_app.values()
            for c in containers
        ],
        "volumes": list(volumes) if volumes is not None else None,
        "engine_error": engine_error,
    }


def render(doc: dict[str, Any]) -> list[str]:
    """Human lines for the status document."""
    lines = [f"device {doc['device']}  (state in {doc['state_dir']})"]
    if doc["release_version"] is None:
        lines.append("release: none applied yet")
    else:
        lines.append(
            f"release {doc['release_version']} at commit {_short(doc['commit'])}, "
            f"applied {doc['applied_at'] or '?'}"
        )
    if doc["config_error"]:
        lines.append(
            f"config: invalid now, a running daemon keeps its previous settings: "
            f"{doc['config_error']}"
        )
    head = f"head {_short(doc['last_fetch_commit'])}"
    if doc["last_fetch_source"] == "daemon":
        lines.append(f"last fetch: {doc['last_fetch']} ({head}, from the running daemon)")
    elif doc["last_fetch"]:
        lines.append(
            f"last fetch: {doc['last_fetch']} ({head}; when the head last moved: no daemon "
            "answered, and unchanged polls are not recorded on disk)"
        )
    else:
        lines.append("last fetch: never")
    lines.append(f"last error: {doc['last_error'] or 'none'}")
    if doc["last_verification_failure"]:
        lines.append(f"last refused release: {doc['last_verification_failure']}")
    if doc["pending"]:
        lines.append(
            f"interrupted change to release {doc['pending']['release_version']} "
            f"(started {doc['pending']['started_at']}): the next cycle finishes or reverts it"
        )
    if doc["engine_error"]:
        lines.append(f"engine: not reachable, containers unknown: {doc['engine_error']}")
    lines.append(f"apps ({len(doc['apps'])}):" if doc["apps"] else "apps: none")
    for app in doc["apps"]:
        lines.append(f"  {app['name']}  revision {_short(app['revision'])}  ({app['path']})")
        if doc["engine_error"]:
            continue
        if not app["containers"]:
            lines.append("    no containers (the next cycle creates them)")
        for c in app["containers"]:
            restarts = f", {c['restart_count']} restarts" if c["restart_count"] else ""
            lines.append(f"    {c['name']:<16} {c['state']:<10} {c['image']}{restarts}")
    for c in doc["other_containers"]:
        lines.append(f"  (not applied) {c['app']}/{c['name']}  {c['state']}")
    if doc["held_back"]:
        lines.append("held back (not retried until the manifest changes):")
        for h in doc["held_back"]:
            lines.append(
                f"  {h['app']} revision {_short(h['revision'])} since {h['at']} "
                f"(release {h['release_version']}): {h['reason']}"
            )
    lines.extend(_deferral_lines(doc))
    if doc["volumes"]:
        lines.append(
            "volumes (kept across updates and removals; delete by hand with docker volume rm): "
            + ", ".join(doc["volumes"])
        )
    return lines


def _deferral_lines(doc: dict[str, Any]) -> list[str]:
    """The hold, the windows and the revisions waiting, with why."""
    lines = []
    hold = doc.get("hold")
    if hold and hold.get("error"):
        lines.append(f"hold: the hold file is damaged, so new revisions wait: {hold['error']}")
        lines.append("  (reconciler unhold removes it; reconciler hold writes a new one)")
    elif hold and hold["active"]:
        until = f" until {hold['until']}" if hold["until"] else " until reconciler unhold"
        reason = f": {hold['reason']}" if hold["reason"] else ""
        lines.append(f"hold: new revisions wait, since {hold['since']}{until}{reason}")
    elif hold:
        lines.append(f"hold: ended {hold['until']} (expired; reconciler unhold tidies it)")
    window = doc.get("maintenance")
    if window:
        where = "inside" if window["in_window"] else "outside"
        then = "" if window["in_window"] else f", next opens {window['next_open'] or 'never'}"
        lines.append(
            f"maintenance windows: {', '.join(window['windows'])} ({window['timezone']}): "
            f"now {where}{then}"
        )
    if doc.get("pending_revisions"):
        lines.append("pending (new revisions not taken yet):")
        for w in doc["pending_revisions"]:
            lines.append(
                f"  {w['app']} revision {_short(w['revision'])} [{w['kind']}]: {w['reason']}"
            )
    return lines


def _last_error(saved: str | None, state_dir_error: str | None) -> str | None:
    if state_dir_error is None:
        return saved
    return f"{state_dir_error}; saved before it: {saved}" if saved else state_dir_error


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"
