"""`fleet-status [REPO] --prometheus URL` (SPEC 3.3): how the rollout of the checkout's release
is going, from what devices report to Prometheus (SPEC 3.4).

Shell: reads the release and the manifests it pins from the checkout (`last_release`), the
inventory when given, asks Prometheus the queries `core.fleet_status.queries` names (through
`adapters.prometheus_query`), lets the pure `core.fleet_status.compute` count, and prints a
table for a terminal, GitHub job-summary markdown, or JSON with every device.
Exit 0; 4 when an app's newest revision failed on more devices than `--max-failures`;
1 when the release or Prometheus cannot be read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from reconciler.adapters import prometheus_query
from reconciler.core import fleet_status
from reconciler.core.fleet_status import AppStatus, FleetStatus, Threshold
from reconciler.fleet.last_release import apps_of_release, read_last_release
from reconciler.fleet.printing import safe, utc_time

EXIT_OVER_LIMIT = 4
DEFAULT_POLL_INTERVAL = 60.0
DEFAULT_LOOKBACK = "1d"
_COLUMNS = (
    ("TARGETED", "targeted"),
    ("APPLIED", "applied"),
    ("PENDING", "pending"),
    ("PAUSED", "paused"),
    ("FAILED", "failed"),
    ("OLDER", "older"),
    ("MISSING", "missing"),
    ("STALE", "stale"),
    ("NEVER SEEN", "never_seen"),
)
LEGEND = (
    "FAILED: the newest revision held back or rolled back; OLDER: runs an older revision, no "
    "reason reported; MISSING: reports nothing for the app; STALE: no report or no successful "
    "fetch for 3 poll intervals (also counted in its last state)"
)


def gather(
    root: Path,
    *,
    prometheus: str,
    now: datetime,
    poll_interval: float,
    lookback: str,
    devices: Mapping[str, Mapping[str, str]] | None,
    threshold: Threshold | None,
    err: TextIO,
) -> FleetStatus | None:
    """The fleet status, or None after saying on `err` why it cannot be had."""
    last, _ = read_last_release(root, err=err)
    if last is None:
        print(
            f"{safe(str(root))}: no usable .fleet/release.json: nothing is rolling out",
            file=err,
        )
        return None
    manifests = apps_of_release(root, last, known=(), err=err)
    try:
        client = prometheus_query.Prometheus(prometheus)
        results = {
            name: client.query(promql, at=now.timestamp())
            for name, promql in fleet_status.queries(lookback).items()
        }
        # Devices that stopped reporting keep their last state: read from their raw samples.
        last_seen = [
            series
            for selector in fleet_status.silent_selectors(
                fleet_status.Observed(**results), lookback
            )
            for series in client.last_sample_times(selector, at=now.timestamp())
        ]
    except prometheus_query.PrometheusError as exc:
        print(f"cannot query Prometheus: {safe(str(exc))}", file=err)
        return None
    if not results["device_info_seen"]:
        print(
            f"warning: {client.shown} has no reconciler_device_info series: is it scraping the "
            "devices' metrics.listen, or their Pushgateway (with honor_labels: true)?",
            file=err,
        )
    return fleet_status.compute(
        current=last,
        manifests=manifests,
        observed=fleet_status.Observed(**results, app_info_last=last_seen),
        now=now,
        poll_interval=poll_interval,
        devices=devices,
        threshold=threshold,
    )


def fleet_status_verb(
    root: Path,
    *,
    prometheus: str,
    output: str = "text",
    devices: Mapping[str, Mapping[str, str]] | None = None,
    threshold: Threshold | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    lookback: str = DEFAULT_LOOKBACK,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    now = (now or datetime.now(UTC)).astimezone(UTC)
    status = gather(
        root,
        prometheus=prometheus,
        now=now,
        poll_interval=poll_interval,
        lookback=lookback,
        devices=devices,
        threshold=threshold,
        err=err,
    )
    if status is None:
        return 1
    if output == "json":
        json.dump(as_json(status, now=now, poll_interval=poll_interval), out, indent=2)
        print(file=out)
    elif output == "markdown":
        print_markdown(status, now=now, out=out)
    else:
        print_text(status, now=now, out=out)
    return EXIT_OVER_LIMIT if status.over_limit else 0


def counts(app: AppStatus, never_seen: int | None = None) -> dict[str, int]:
    found = {state: app.count(state) for state in fleet_status.DEVICE_STATES}
    return {"targeted": app.targeted, **found, "stale": app.stale} | (
        {"never_seen": never_seen} if never_seen is not None else {}
    )


def _rollout_text(app: AppStatus) -> str:
    parts = []
    if app.paused:
        parts.append("PAUSED")
    if app.abort is not None:
        parts.append(f"ABORT {app.abort[:12]}")
    parts.append(app.wave)
    return ", ".join(parts)


def _notes(status: FleetStatus) -> list[str]:
    notes = []
    for app in status.apps:
        reasons = app.pending_reasons()
        if reasons:
            shown = ", ".join(f"{reason} {n}" for reason, n in reasons.items())
            notes.append(f"{app.name}: pending: {shown}")
        if app.next_wave is not None and not app.paused:
            notes.append(f"{app.name}: next wave opens {utc_time(app.next_wave)}")
        if app.tried or app.failed:
            share = f" ({app.failed * 100 // app.tried}%)" if app.tried else ""
            limit = ""
            if status.threshold is not None:
                word = "OVER" if app.over_limit else "within"
                limit = f", {word} --max-failures {status.threshold}"
            notes.append(
                f"{app.name}: revision {app.revision[:12]} failed on {app.failed} of "
                f"{app.tried} device(s) that tried it{share}{limit}"
            )
        if app.abort is not None:
            notes.append(
                f"{app.name}: aborting {app.abort[:12]}: {app.still_aborted} device(s) still run it"
            )
    return [safe(note) for note in notes]


def _header(status: FleetStatus, now: datetime) -> list[str]:
    r = status.release
    reporting = sum(1 for d in status.devices.values() if d.reporting)
    return [
        f"release {r.version} (commit {safe(r.source_commit[:12]) or 'unknown'}, created "
        f"{utc_time(r.created)}, expires {utc_time(r.expires)}) at {utc_time(now)}",
        f"devices: {len(status.devices)} known to Prometheus, {reporting} reporting now, "
        f"{len(status.stale_devices)} stale, {len(status.never_seen)} never seen",
    ]


def print_text(status: FleetStatus, *, now: datetime, out: TextIO) -> None:
    for line in _header(status, now):
        print(line, file=out)
    head = ["APP", "REVISION", "ROLLOUT", *(title for title, _ in _COLUMNS)]
    rows = [head]
    for app in status.apps:
        found = counts(app)
        rows.append(
            [
                safe(app.name),
                app.revision[:12],
                _rollout_text(app),
                *(str(found[key]) for _, key in _COLUMNS),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    if not status.apps:
        print("(the release pins no apps)", file=out)
    for note in _notes(status):
        print(note, file=out)
    if status.stale_devices:
        shown = ", ".join(safe(d) for d in status.stale_devices[:20])
        more = (
            f" and {len(status.stale_devices) - 20} more" if len(status.stale_devices) > 20 else ""
        )
        print(f"stale: {shown}{more}", file=out)
    if status.never_seen:
        shown = ", ".join(safe(d) for d in status.never_seen[:20])
        more = f" and {len(status.never_seen) - 20} more" if len(status.never_seen) > 20 else ""
        print(f"never seen: {shown}{more}", file=out)
    print(LEGEND, file=out)
    for app in status.over_limit:
        print(
            f"fleet-status: {safe(app.name)} revision {app.revision[:12]} failed on {app.failed} "
            f"of {app.tried} device(s), over --max-failures {status.threshold}",
            file=out,
        )


def _md(text: str) -> str:
    return safe(text).replace("|", "\\|").replace("<", "&lt;")


def print_markdown(status: FleetStatus, *, now: datetime, out: TextIO) -> None:
    verdict = (
        f"**{len(status.over_limit)} app(s) over --max-failures {status.threshold}**"
        if status.over_limit
        else "no app over the failure limit"
        if status.threshold is not None
        else ""
    )
    print("## Fleet status", file=out)
    print(file=out)
    for line in _header(status, now):
        print(f"{_md(line)}  ", file=out)
    if verdict:
        print(verdict, file=out)
    print(file=out)
    head = ["app", "revision", "rollout", *(title.lower() for title, _ in _COLUMNS)]
    print("| " + " | ".join(head) + " |", file=out)
    print("|" + "|".join(["---"] * 3 + ["---:"] * len(_COLUMNS)) + "|", file=out)
    for app in status.apps:
        found = counts(app)
        name = f"**{_md(app.name)}**" if app.over_limit else _md(app.name)
        cells = [name, f"`{app.revision[:12]}`", _md(_rollout_text(app))]
        print("| " + " | ".join(cells + [str(found[k]) for _, k in _COLUMNS]) + " |", file=out)
    print(file=out)
    for note in _notes(status):
        print(f"- {_md(note)}", file=out)
    if status.stale_devices:
        print(f"- stale: {_md(', '.join(status.stale_devices[:50]))}", file=out)
    if status.never_seen:
        print(f"- never seen: {_md(', '.join(status.never_seen[:50]))}", file=out)
    print(file=out)
    print(f"<sub>{_md(LEGEND)}</sub>", file=out)


def as_json(status: FleetStatus, *, now: datetime, poll_interval: float) -> dict[str, Any]:
    r = status.release
    return {
        "now": utc_time(now),
        "poll_interval_seconds": poll_interval,
        "max_failures": str(status.threshold) if status.threshold is not None else None,
        "release": {
            "version": r.version,
            "source_commit": r.source_commit,
            "created": utc_time(r.created),
            "expires": utc_time(r.expires),
        },
        "apps": [
            {
                "name": app.name,
                "path": app.path,
                "revision": app.revision,
                "since": utc_time(app.since),
                "paused": app.paused,
                "abort": app.abort,
                "wave": app.wave,
                "open_percent": app.open_percent,
                "next_wave": utc_time(app.next_wave) if app.next_wave else None,
                "counts": counts(app),
                "pending_reasons": app.pending_reasons(),
                "tried": app.tried,
                "failed": app.failed,
                "over_limit": app.over_limit,
                "still_running_aborted": app.still_aborted,
                "devices": [
                    {
                        "device": row.device,
                        "state": row.state,
                        "reason": row.reason or None,
                        "stale": row.stale,
                        "bucket": row.bucket,
                        "in_open_wave": row.in_wave,
                        "reported": [{"revision": rev, "state": st} for rev, st in row.revisions],
                    }
                    for row in app.devices
                ],
            }
            for app in status.apps
        ],
        "devices": [
            {
                "device": d.name,
                "reporting": d.reporting,
                "stale": d.name in status.stale_devices,
                "last_fetch": (
                    utc_time(datetime.fromtimestamp(d.last_fetch, UTC)) if d.last_fetch else None
                ),
                "hold": d.hold,
                "in_maintenance_window": d.in_window,
                "applied_release": d.applied_release,
                "applied_commit": d.applied_commit,
            }
            for d in status.devices.values()
        ],
        "never_seen": list(status.never_seen),
    }
