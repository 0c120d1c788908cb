"""The fleet's rollout state (SPEC 3.3 `fleet-status`, `rollout gate`): the signed release joined
with what devices report to Prometheus (SPEC 3.4) and, when given, the inventory.

Pure: series (label sets and values, as any Prometheus query returns them), the release, its
manifests, the inventory and `now` in; per app and per device counts out. The Prometheus client
(`adapters.prometheus_query`) and the printing (`fleet.fleet_status`) are elsewhere.

How series become devices (SPEC 3.4 names and labels):
- `reconciler_device_info{device}` names the device behind a scrape target: a series without a
  `device` label belongs to the device whose `device_info` shares its `job` and `instance`.
  A series pushed to a Pushgateway carries its grouping label `device` and is taken as is.
- `reconciler_app_info{app,revision,state}`: one series per app and revision a device reports;
  `state` is running, pending, paused, held_back or failed.
- `reconciler_last_fetch_success_timestamp_seconds`, `reconciler_hold`,
  `reconciler_in_maintenance_window`, `reconciler_applied_info{commit,release}`.

A device's state for an app, judged against the app's newest revision N in the release:
failed (N held_back or failed: held back or rolled back), applied (N running), paused, pending
(with why: hold, wave, window), older (runs another revision and reports no reason), missing
(targeted, but reports nothing for the app). A device is stale when it no longer reports (seen
in the look-back range, not now) or its last successful fetch is older than 3 poll intervals;
a stale device keeps its last reported state and is also counted as stale (for one that no
longer reports, the app_info series it reported last, see `silent_selectors`). Never seen: an
inventory device Prometheus has no `device_info` for. Failures count against the newest
revision only: devices that tried it are those reporting it running, held_back or failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from reconciler import model
from reconciler.core import release, rollout, selection

STALE_POLLS = 3
APP_STATES = ("running", "pending", "paused", "held_back", "failed")
FAILED_STATES = frozenset({"held_back", "failed"})
# The order devices are listed in per app, and the columns of the summary.
DEVICE_STATES = ("applied", "pending", "paused", "failed", "older", "missing", "never_seen")
_THRESHOLD = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<percent>%?)")


@dataclass(frozen=True)
class Series:
    """One series of an instant query: its labels and its value."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Observed:
    """What Prometheus holds, one list per query (see `queries`)."""

    device_info_now: Sequence[Series]
    device_info_seen: Sequence[Series]
    last_fetch: Sequence[Series]
    app_info: Sequence[Series]
    app_info_last: Sequence[Series] = ()  # value: unix time of each series' last sample
    hold: Sequence[Series] = ()
    in_window: Sequence[Series] = ()
    applied_info: Sequence[Series] = ()


# Devices that stopped reporting whose last app states are looked up, one range query each;
# beyond this many, the rest show as missing for their apps (and stale all the same).
MAX_SILENT_LOOKUPS = 100


def silent_selectors(observed: Observed, lookback: str) -> list[str]:
    """Range selectors for the app_info series of scraped devices seen in the look-back range
    but not reporting now: Prometheus marked their series stale, so only their raw samples
    (`Prometheus.last_sample_times`) say what each reported last. Pushed devices need none:
    a Pushgateway keeps serving what they pushed last."""
    reporting = {s.labels.get("device", "") for s in observed.device_info_now}
    selectors: dict[str, str] = {}
    for series in observed.device_info_seen:
        name = series.labels.get("device", "")
        job, instance = _target(series.labels)
        if not name or name in reporting or name in selectors or not instance:
            continue
        matchers = f'job="{_promql_string(job)}",instance="{_promql_string(instance)}"'
        selectors[name] = f"reconciler_app_info{{{matchers}}}[{lookback}]"
    return [selectors[name] for name in sorted(selectors)][:MAX_SILENT_LOOKUPS]


def _promql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def queries(lookback: str) -> dict[str, str]:
    """The PromQL instant queries whose results fill `Observed`, by its field names.

    `lookback` (a Prometheus duration such as `1d`) bounds how long a device that stopped
    reporting is still known (and shown stale rather than forgotten).
    """
    return {
        "device_info_now": "reconciler_device_info",
        "device_info_seen": f"last_over_time(reconciler_device_info[{lookback}])",
        "last_fetch": (
            f"last_over_time(reconciler_last_fetch_success_timestamp_seconds[{lookback}])"
        ),
        "app_info": "reconciler_app_info == 1",
        "hold": "reconciler_hold",
        "in_window": "reconciler_in_maintenance_window",
        "applied_info": "reconciler_applied_info == 1",
    }


@dataclass(frozen=True)
class Threshold:
    """`--max-failures`: a count of devices, or a percent of the devices that tried a revision."""

    count: int | None = None
    percent: float | None = None

    def exceeded(self, failed: int, tried: int) -> bool:
        if self.count is not None:
            return failed > self.count
        assert self.percent is not None
        return tried > 0 and failed * 100 > self.percent * tried

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_threshold(text: str) -> Threshold:
    """`N` (devices) or `P%` (0..100 percent of the devices that tried it); ValueError else."""
    match = _THRESHOLD.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a device count N or a percent P%, got {text!r}")
    if match["percent"]:
        percent = float(match["number"])
        if percent > 100:
            raise ValueError(f"a percent must be 0..100, got {text!r}")
        return Threshold(percent=percent)
    if "." in match["number"]:
        raise ValueError(f"a device count must be a whole number, got {text!r}")
    return Threshold(count=int(match["number"]))


@dataclass(frozen=True)
class DeviceReport:
    """One device as Prometheus knows it."""

    name: str
    reporting: bool  # has a device_info sample now
    last_fetch: float | None  # unix time of the last successful fetch, None when never
    hold: bool | None = None
    in_window: bool | None = None
    applied_release: str | None = None
    applied_commit: str | None = None
    apps: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def stale(self, now: float, poll_interval: float) -> bool:
        if not self.reporting or self.last_fetch is None:
            return True
        return now - self.last_fetch > STALE_POLLS * poll_interval


def devices_from(observed: Observed) -> dict[str, DeviceReport]:
    """Device name -> report, joining every series to its device (see the module docstring)."""
    by_target: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for series in [*observed.device_info_seen, *observed.device_info_now]:
        name = series.labels.get("device", "")
        if not name:
            continue
        seen.add(name)
        by_target[_target(series.labels)] = name
    reporting = {s.labels.get("device", "") for s in observed.device_info_now} - {""}

    def owner(series: Series) -> str | None:
        # A pushed series names its device; a scraped one shares its target's labels.
        return series.labels.get("device") or by_target.get(_target(series.labels))

    last_fetch: dict[str, float] = {}
    for series in observed.last_fetch:
        who = owner(series)
        if who is not None and series.value > 0:
            last_fetch[who] = max(last_fetch.get(who, 0.0), series.value)
    flags: dict[str, dict[str, bool]] = {}
    for key, found in (("hold", observed.hold), ("in_window", observed.in_window)):
        for series in found:
            if (who := owner(series)) is not None:
                flags.setdefault(who, {})[key] = series.value == 1
    applied: dict[str, tuple[str, str]] = {}
    for series in observed.applied_info:
        if (who := owner(series)) is not None:
            applied[who] = (series.labels.get("release", ""), series.labels.get("commit", ""))
    apps: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for series in observed.app_info:
        who = owner(series)
        app = series.labels.get("app")
        # A state SPEC 3.4 does not name (a newer device?) is not guessed at: left out.
        if who is None or not app or series.labels.get("state") not in APP_STATES:
            continue
        entry = (series.labels.get("revision", ""), series.labels.get("state", ""))
        apps.setdefault(who, {}).setdefault(app, set()).add(entry)
    for who, last in _last_states(observed.app_info_last, owner, reporting).items():
        for app, entry in last.items():
            apps.setdefault(who, {}).setdefault(app, {entry})
    return {
        name: DeviceReport(
            name=name,
            reporting=name in reporting,
            last_fetch=last_fetch.get(name),
            hold=flags.get(name, {}).get("hold"),
            in_window=flags.get(name, {}).get("in_window"),
            applied_release=applied.get(name, (None, None))[0],
            applied_commit=applied.get(name, (None, None))[1],
            apps={app: tuple(sorted(pairs)) for app, pairs in apps.get(name, {}).items()},
        )
        for name in sorted(seen | set(apps))
    }


def _last_states(
    found: Sequence[Series], owner: Callable[[Series], str | None], reporting: set[str]
) -> dict[str, dict[str, tuple[str, str]]]:
    """Device -> app -> the (revision, state) seen last, for devices that no longer report:
    the series with the latest sample time wins (a device has one series per app at a time)."""
    newest: dict[tuple[str, str], tuple[float, tuple[str, str]]] = {}
    for series in found:
        who = owner(series)
        app = series.labels.get("app")
        state = series.labels.get("state")
        if who is None or who in reporting or not app or state not in APP_STATES:
            continue
        entry = (series.labels.get("revision", ""), state)
        if (who, app) not in newest or series.value > newest[(who, app)][0]:
            newest[(who, app)] = (series.value, entry)
    last: dict[str, dict[str, tuple[str, str]]] = {}
    for (who, app), (_, entry) in newest.items():
        last.setdefault(who, {})[app] = entry
    return last


def _target(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("job", ""), labels.get("instance", "")


@dataclass(frozen=True)
class DeviceRow:
    """One targeted device's view of one app."""

    device: str
    state: str  # one of DEVICE_STATES
    reason: str  # for pending: hold, wave, window or ""; else ""
    revisions: tuple[tuple[str, str], ...]  # (revision, state) as reported
    stale: bool
    bucket: int
    in_wave: bool


@dataclass(frozen=True)
class AppStatus:
    name: str
    path: str
    revision: str
    since: datetime
    paused: bool
    abort: str | None
    open_percent: int
    wave: str  # "wave 2 of 3 (50%)", "no waves", "no wave open yet"
    next_wave: datetime | None
    devices: tuple[DeviceRow, ...]
    tried: int
    failed: int
    over_limit: bool
    still_aborted: int  # devices still running the aborted revision

    def count(self, state: str) -> int:
        return sum(1 for row in self.devices if row.state == state)

    @property
    def targeted(self) -> int:
        return len(self.devices)

    @property
    def stale(self) -> int:
        return sum(1 for row in self.devices if row.stale and row.state != "never_seen")

    def pending_reasons(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.devices:
            if row.state == "pending":
                found[row.reason or "unknown"] = found.get(row.reason or "unknown", 0) + 1
        return dict(sorted(found.items()))


@dataclass(frozen=True)
class FleetStatus:
    release: release.Release
    apps: tuple[AppStatus, ...]
    devices: Mapping[str, DeviceReport]
    stale_devices: tuple[str, ...]
    never_seen: tuple[str, ...]
    threshold: Threshold | None

    @property
    def over_limit(self) -> tuple[AppStatus, ...]:
        return tuple(app for app in self.apps if app.over_limit)


def compute(
    *,
    current: release.Release,
    manifests: Sequence[model.AppManifest],
    observed: Observed,
    now: datetime,
    poll_interval: float,
    devices: Mapping[str, Mapping[str, str]] | None = None,
    threshold: Threshold | None = None,
) -> FleetStatus:
    """Per app of the release: its rollout, and each targeted device's state.

    `devices` is the inventory (device name -> labels), when given.
    `manifests` are the release's pinned manifests (for names, selectors and waves); a pin
    without one is shown under its path with no waves. Targeted devices: with an inventory,
    those the app's selector matches plus any other device reporting the app; without one,
    the devices reporting the app.
    """
    reports = devices_from(observed)
    when = now.timestamp()
    by_path = {m.path: m for m in manifests}
    listed = dict(devices or {})
    statuses = []
    for path, pin in current.apps:
        manifest = by_path.get(path)
        name = manifest.name if manifest else path
        waves = manifest.waves if manifest else ()
        decision = rollout.decide(waves, device_name="", app_name=name, since=pin.since, now=now)
        targeted = {d for d, r in reports.items() if name in r.apps}
        if manifest is not None:
            targeted |= {
                d for d, labels in listed.items() if selection.matches(manifest.selector, labels)
            }
        rows = [
            _row(
                device,
                reports.get(device),
                app=name,
                revision=pin.sha256,
                open_percent=decision.open_percent,
                now=when,
                poll_interval=poll_interval,
            )
            for device in sorted(targeted)
        ]
        tried = sum(
            1
            for row in rows
            if any(
                rev == pin.sha256 and st in ("running", *FAILED_STATES) for rev, st in row.revisions
            )
        )
        failed = sum(1 for row in rows if row.state == "failed")
        still = (
            sum(1 for row in rows if (pin.abort, "running") in row.revisions) if pin.abort else 0
        )
        statuses.append(
            AppStatus(
                name=name,
                path=path,
                revision=pin.sha256,
                since=pin.since,
                paused=pin.paused,
                abort=pin.abort,
                open_percent=decision.open_percent,
                wave=_wave_text(waves, decision, pin.since, now),
                next_wave=decision.next_change,
                devices=tuple(rows),
                tried=tried,
                failed=failed,
                over_limit=threshold is not None and threshold.exceeded(failed, tried),
                still_aborted=still,
            )
        )
    stale = tuple(n for n, r in reports.items() if r.stale(when, poll_interval))
    return FleetStatus(
        release=current,
        apps=tuple(sorted(statuses, key=lambda a: a.name)),
        devices=reports,
        stale_devices=stale,
        never_seen=tuple(sorted(set(listed) - set(reports))),
        threshold=threshold,
    )


def _row(
    device: str,
    report: DeviceReport | None,
    *,
    app: str,
    revision: str,
    open_percent: int,
    now: float,
    poll_interval: float,
) -> DeviceRow:
    mine = rollout.bucket(device, app)
    in_wave = mine < open_percent
    if report is None:
        return DeviceRow(device, "never_seen", "", (), True, mine, in_wave)
    reported = report.apps.get(app, ())
    states = {state for _, state in reported}
    reason = ""
    if any(rev == revision and st in FAILED_STATES for rev, st in reported):
        state = "failed"
    elif (revision, "running") in reported:
        state = "applied"
    elif "paused" in states:
        state = "paused"
    elif "pending" in states:
        state = "pending"
        if report.hold:
            reason = "hold"
        elif not in_wave:
            reason = "wave"
        elif report.in_window is False:
            reason = "window"
    elif reported:
        state = "older"
    else:
        state = "missing"
    return DeviceRow(
        device, state, reason, reported, report.stale(now, poll_interval), mine, in_wave
    )


def _wave_text(
    waves: Sequence[model.Wave], decision: rollout.RolloutDecision, since: datetime, now: datetime
) -> str:
    if not waves:
        return "no waves (100%)"
    opened = [n for n, w in enumerate(waves, start=1) if _opens(since, w.after) <= now]
    if not opened:
        return f"no wave open yet (0 of {len(waves)})"
    return f"wave {max(opened)} of {len(waves)} ({decision.open_percent}%)"


def _opens(since: datetime, after: float) -> datetime:
    try:
        return since + timedelta(seconds=after)
    except OverflowError:
        return datetime.max.replace(tzinfo=since.tzinfo)
