"""Health rules: observations in, verdicts out (SPEC 2.1 `health`, 3.1 `health:`, 3.2 step 6).

Owns: deciding, per app, whether its containers are healthy within `health.timeout`, and why not,
from observations and times given as plain values (`ContainerWatch`: what one observation means,
the certain-failure rules and the stable window; `HealthWatch`: per-app decisions, host checks,
the timeout). `device.health_wait` is the shell that feeds it: it inspects, probes, runs host
commands and sleeps. An empty `Verdict.failed` means commit, anything else means roll back and
hold those apps' revisions back. Tested with a fake clock and no engine.

Rules, per container:
- It must be running and its check (if any) must pass: `http` GET on the published host port,
  status 200..399 (redirects are not followed: a 3xx passes); `tcp` connect, and the connection
  is not closed at once; `exec` exits 0 inside the container; `docker` the image's HEALTHCHECK
  reports "healthy".
- Then it must stay running with an unchanged restart count for `stable_for` seconds (the stable
  window). A restart moves the window's start to the next passing observation; a check that fails
  inside the window does not restart it, but the app passes only on an observation whose check
  passes (SPEC 3.1: "stay running, without restarts, this long").
- The check is probed every `health.interval` (SPEC 2.1; default 2 s) while the container runs;
  its state is inspected more often (`health_wait.POLL_INTERVAL`), and the last probe's result
  stands until the next one. A restart or a stop drops that result and makes the next probe due
  at once. A failed probe: an HTTP answer outside 200..399, a refused, reset or timed-out
  connection, an `exec` exiting non-zero or running past its timeout, a HEALTHCHECK reporting
  "unhealthy" (read from the inspect at each probe time). Not a failed probe: an engine that
  cannot be asked (it may be restarting) and a HEALTHCHECK still "starting". A passing probe
  resets the count.
- Failure is decided at once, without waiting out the timeout, when it is certain:
  - `failure_threshold` failed probes in a row after `start_period` (counted from the start of
    the wait, which begins right after the apply started the containers);
  - exited and its restart policy will not bring it back (`no`, or `on-failure` after exit 0),
    or `dead`;
  - it keeps restarting: the restart count rose by 2 or more since the wait began, or it was
    seen in status "restarting" in two separate episodes (episodes, not polls, so the verdict
    does not depend on the poll interval);
  - `docker: true` but the running container reports no health status twice in a row (the
    image has no HEALTHCHECK, so it can never pass).
  `health.timeout` stays the bound for a container that never becomes healthy (one that keeps
  waiting, e.g. "starting" forever, or failing probes inside `start_period`).
- A container with restart `no` (or `on-failure`) that exited 0 and has no `health` check is a
  finished job (a migration, a one-shot init), not a failure: it counts as healthy. With a check
  it fails, since the check can no longer pass.
- Engine errors while inspecting are not certain either (the engine may be restarting): the
  container keeps waiting with that reason, so a container removed behind our back fails at the
  timeout.

Per app and device:
- Apps are decided independently; one failing app does not stop checking the others, and the
  wait returns as soon as every app is decided. An app fails with its first certain failure, or
  at the timeout with the last reason of each container not yet healthy.
- `health.commands` (host argv, no shell, exit 0 = healthy) judge the whole device, so they run
  once every app's containers are healthy at the same time. A failing command is retried every
  interval until the timeout, and then fails every app. When some app has already failed on its
  own checks, the commands are skipped: they could not tell which app broke the device, the cycle
  rolls back anyway, and the apps that passed are tried again next cycle without it (SPEC 3.2).
- No targets: healthy at once (nothing changed that could be blamed).

Must not: do I/O, read a clock or sleep; every time is an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler import model
from reconciler.core.settings import HealthSettings
from reconciler.ports import HealthInfo

DUE_SLACK = 0.01  # a probe this close to due runs now rather than a round later
_WILDCARD_IPS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared, never bound
_CERTAIN_RESTARTS = 2  # restarts since the wait began that make a crash loop certain
_CERTAIN_EPISODES = 2  # separate "restarting" episodes seen that make a crash loop certain
_NO_HEALTHCHECK_SEEN = 2  # running with no health status this often in a row: no HEALTHCHECK


@dataclass(frozen=True)
class Target:
    """One container to check."""

    app: str
    container: str  # the manifest's container name
    container_id: str  # engine id of the running container
    spec: model.ContainerSpec


@dataclass(frozen=True)
class Verdict:
    """The outcome of one wait: `failed` maps app -> reason naming container and check."""

    failed: dict[str, str]
    seconds: float  # how long the wait took

    @property
    def healthy(self) -> bool:
        return not self.failed


# --- one container ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """One http/tcp/exec probe: passed or not, and what was seen (for the reason).

    `counts` is False when the probe could not be made (the engine could not run the exec): it
    neither passes nor counts toward `failure_threshold`.
    """

    ok: bool
    detail: str
    counts: bool = True


@dataclass(frozen=True)
class Observation:
    """One look at a container: its inspect state plus, when it was running, its probe."""

    status: str  # State.Status: created, running, restarting, paused, exited, dead
    restart_count: int
    exit_code: int = 0
    docker_health: str | None = None  # State.Health.Status; None = no HEALTHCHECK status
    probe: ProbeResult | None = None  # http/tcp/exec result; None = not probed

    @classmethod
    def from_info(cls, info: HealthInfo, probe: ProbeResult | None = None) -> Observation:
        return cls(
            status=info.status,
            restart_count=info.restart_count,
            exit_code=info.exit_code,
            docker_health=info.health,
            probe=probe,
        )


class State(StrEnum):
    WAITING = "waiting"  # not healthy yet, may still become so
    STABLE = "stable"  # healthy on this observation, stable window done
    FAILED = "failed"  # certain: will not become healthy within any wait


@dataclass(frozen=True)
class Assessment:
    state: State
    reason: str  # why not healthy (WAITING/FAILED) or why healthy (STABLE)


def will_restart(restart: model.RestartPolicy, exit_code: int) -> bool:
    """Whether the engine's restart policy brings back a container that exited with this code."""
    if restart == "no":
        return False
    if restart == "on-failure":
        return exit_code != 0
    return True  # always, unless-stopped (unless stopped by hand, which we cannot tell apart)


def check_label(spec: model.ContainerSpec) -> str:
    """How a person names the container's check in a reason: `http check GET http://...`."""
    check = spec.health
    if check is None:
        return "no health check"
    if check.kind == "http":
        port = check.port or 0
        return f"http check GET {http_url(probe_host(spec, port), port, check.path)}"
    if check.kind == "tcp":
        port = check.port or 0
        return f"tcp check {_host_port(probe_host(spec, port), port)}"
    if check.kind == "exec":
        return f"exec check {list(check.command)!r}"
    if check.kind == "docker":
        return "docker HEALTHCHECK"
    return f"{check.kind} check"


def probe_host(spec: model.ContainerSpec, port: int) -> str:
    """The address to probe a host port on: the published port's host_ip when it is a specific
    address (a port published on 127.0.0.2 only answers there), else loopback."""
    if spec.network_mode == "host":
        return "127.0.0.1"
    for mapping in spec.ports:
        if mapping.host_port == port and mapping.protocol == "tcp":
            return "127.0.0.1" if mapping.host_ip in _WILDCARD_IPS else mapping.host_ip
    return "127.0.0.1"


def http_url(host: str, port: int, path: str) -> str:
    return f"http://{_host_port(host, port)}{request_path(path)}"


class ContainerWatch:
    """Bookkeeping for one container across observations: probe timing and failed probes in a
    row, certain failures, the stable window.

    Pure: `observe` takes the observation and the time it was made. FAILED is final; STABLE and
    WAITING are re-decided on every observation (a container that was stable may crash later).
    `started` is when the wait began (`start_period` counts from it); by default the time of the
    first observation.
    """

    def __init__(
        self,
        *,
        container: str,
        spec: model.ContainerSpec,
        stable_for: float,
        started: float | None = None,
    ) -> None:
        self.container = container
        self.spec = spec
        self.stable_for = stable_for
        self.check = check_label(spec)
        self.last = Assessment(State.WAITING, "not observed yet")
        self._started = started
        self._baseline: int | None = None  # restart count when the wait began
        self._episodes = 0  # separate runs of "restarting" observations
        self._in_restart = False
        self._no_healthcheck = 0  # running with no HEALTHCHECK status, in a row
        self._window_start: float | None = None  # when the checks first passed
        self._window_restarts = 0  # restart count at the window's start
        self._probe: ProbeResult | None = None  # the last probe of this run of the container
        self._probe_restarts = 0  # restart count when it was made
        self._next_probe: float | None = None  # None: due now
        self._failed_in_row = 0  # failed probes in a row after start_period

    def probe_due(self, now: float) -> bool:
        """Whether the check should be probed on an observation made at `now`."""
        return self._next_probe is None or now >= self._next_probe - DUE_SLACK

    @property
    def next_probe(self) -> float | None:
        """When the next probe is due (None: at once, or no probe while FAILED)."""
        return None if self.last.state is State.FAILED else self._next_probe

    def observe(self, seen: Observation, now: float) -> Assessment:
        if self._started is None:
            self._started = now
        if self.last.state is State.FAILED:
            return self.last
        self.last = self._assess(seen, now)
        return self.last

    def unreachable(self, reason: str) -> Assessment:
        """The engine could not be asked: not certain, and the window is neither broken nor
        advanced (only a passing observation can end it)."""
        if self.last.state is not State.FAILED:
            self.last = Assessment(State.WAITING, reason)
        return self.last

    def _assess(self, seen: Observation, now: float) -> Assessment:
        failure = self._certain_failure(seen)
        if failure is not None:
            return Assessment(State.FAILED, failure)
        if self._finished_job(seen):
            return Assessment(
                State.STABLE,
                f"finished: exited with code 0 and restart policy {self.spec.restart!r} "
                "will not restart it (a one-shot job)",
            )
        if seen.status != "running":
            self._window_start = None  # "stay running": any stop breaks the window
            self._forget_probe()
            return Assessment(State.WAITING, _status_reason(seen, self.spec.restart))
        if self._window_start is not None and seen.restart_count != self._window_restarts:
            self._window_start = None  # restarted between two looks
        if self._probe is not None and seen.restart_count != self._probe_restarts:
            self._forget_probe()  # that probe judged the container's previous run
        failed_probes = self._count_probe(seen, now)
        if failed_probes is not None:
            return Assessment(State.FAILED, failed_probes)
        passed, detail = self._check_passes(seen)
        if self._window_start is None:
            if not passed:
                return Assessment(State.WAITING, detail)
            self._window_start, self._window_restarts = now, seen.restart_count
        stable_seconds = now - self._window_start
        if not passed:
            return Assessment(
                State.WAITING, f"{detail} (it first passed {stable_seconds:.1f} s ago)"
            )
        if stable_seconds >= self.stable_for:
            return Assessment(State.STABLE, f"{self.check} passes, stable {stable_seconds:.1f} s")
        return Assessment(
            State.WAITING,
            f"{self.check} passes; must stay running without restarts for "
            f"{self.stable_for:g} s ({stable_seconds:.1f} s so far)",
        )

    def _forget_probe(self) -> None:
        self._probe = None
        self._next_probe = None

    def _count_probe(self, seen: Observation, now: float) -> str | None:
        """Take this observation's probe (for `docker`, the HEALTHCHECK status when a probe is
        due); the reason when it makes `failure_threshold` failed probes in a row."""
        check = self.spec.health
        if check is None:
            return None
        if check.kind == "docker":
            if not self.probe_due(now):
                return None
            verdict = {"healthy": True, "unhealthy": False}.get(seen.docker_health or "")
            probe = (
                None
                if verdict is None
                else ProbeResult(ok=verdict, detail=f"reports {seen.docker_health}")
            )
            self._next_probe = now + check.interval
        elif seen.probe is None:
            return None
        else:
            probe = seen.probe
            self._probe, self._probe_restarts = probe, seen.restart_count
            self._next_probe = now + check.interval
        if probe is None or not probe.counts:
            return None
        if probe.ok:
            self._failed_in_row = 0
            return None
        started = now if self._started is None else self._started
        if now - started < check.start_period:
            return None  # failed probes in the start period do not count
        self._failed_in_row += 1
        if self._failed_in_row < check.failure_threshold:
            return None
        return (
            f"unhealthy: {self.check}: {probe.detail}; {self._failed_in_row} failed probe(s) in "
            f"a row, {check.interval:g} s apart (failure_threshold {check.failure_threshold})"
        )

    def _certain_failure(self, seen: Observation) -> str | None:
        if self._baseline is None:
            self._baseline = seen.restart_count
        if seen.status == "restarting":
            if not self._in_restart:
                self._episodes += 1
            self._in_restart = True
        else:
            self._in_restart = False
        restarts = seen.restart_count - self._baseline
        if restarts >= _CERTAIN_RESTARTS:
            return (
                f"keeps restarting: restarted {restarts} times since the health wait began "
                f"(last exit code {seen.exit_code})"
            )
        if self._episodes >= _CERTAIN_EPISODES:
            return (
                f"keeps restarting: seen restarting {self._episodes} times "
                f"(restart count {seen.restart_count})"
            )
        if seen.status == "dead":
            return "is dead (the engine failed to stop or remove it); it will not run again"
        if (
            seen.status == "exited"
            and not will_restart(self.spec.restart, seen.exit_code)
            and not self._finished_job(seen)
        ):
            unable = f", so its {self.check} can never pass" if seen.exit_code == 0 else ""
            return (
                f"exited with code {seen.exit_code} and restart policy "
                f"{self.spec.restart!r} will not restart it{unable}"
            )
        if self.spec.health is not None and self.spec.health.kind == "docker":
            if seen.status == "running" and seen.docker_health is None:
                self._no_healthcheck += 1
            else:
                self._no_healthcheck = 0
            if self._no_healthcheck >= _NO_HEALTHCHECK_SEEN:
                return "health is docker: true, but the image defines no HEALTHCHECK"
        return None

    def _finished_job(self, seen: Observation) -> bool:
        """Exited 0 for good with no check to pass: a one-shot job that did its work."""
        return (
            seen.status == "exited"
            and seen.exit_code == 0
            and self.spec.health is None
            and not will_restart(self.spec.restart, 0)
        )

    def _check_passes(self, seen: Observation) -> tuple[bool, str]:
        """Whether the check passes on a running container, and what was seen."""
        check = self.spec.health
        if check is None:
            return True, "running"
        if check.kind == "docker":
            if seen.docker_health == "healthy":
                return True, f"{self.check} reports healthy"
            return False, f"{self.check} reports {seen.docker_health or 'no status'}"
        if self._probe is None:
            return False, f"{self.check}: not probed"
        if not self._probe.counts:
            return False, f"{self.check}: {self._probe.detail}"
        failed = f" ({self._failed_in_row} in a row)" if self._failed_in_row > 1 else ""
        return self._probe.ok, f"{self.check}: {self._probe.detail}{failed}"


def _status_reason(seen: Observation, restart: model.RestartPolicy) -> str:
    if seen.status == "exited":
        return (
            f"exited with code {seen.exit_code}; waiting for restart policy {restart!r} "
            "to start it again"
        )
    if seen.status == "created":
        return "created but not started"
    return f"is {seen.status or 'in an unknown state'}, not running"


# --- apps, host checks, timeout --------------------------------------------------------------


class HealthWatch:
    """Per-app decisions over rounds of observations. Pure: the shell feeds it values and times.

    A round: `observe`/`unreachable` for each of `to_observe()`, then `end_round(now)`; when it
    returns True the shell runs the host commands and reports with `host_checks(reason, now)`.
    `expire()` at the deadline fails whatever is undecided. `done` once every app is decided.
    """

    def __init__(
        self, targets: Sequence[Target], settings: HealthSettings, *, started: float | None = None
    ) -> None:
        self.settings = settings
        self.failed: dict[str, str] = {}
        self.passed: set[str] = set()
        self._watches: dict[str, list[tuple[Target, ContainerWatch]]] = {}
        for target in targets:
            watch = ContainerWatch(
                container=target.container,
                spec=target.spec,
                stable_for=settings.stable_for,
                started=started,
            )
            self._watches.setdefault(target.app, []).append((target, watch))
        self._host_reason: str | None = None  # the last failing host command, if any

    @property
    def done(self) -> bool:
        return all(app in self.failed or app in self.passed for app in self._watches)

    def undecided(self) -> list[str]:
        return [app for app in self._watches if app not in self.failed and app not in self.passed]

    def to_observe(self) -> list[Target]:
        return [target for app in self.undecided() for target, _ in self._watches[app]]

    def observe(self, target: Target, seen: Observation, now: float) -> Assessment:
        assessment = self._watch(target).observe(seen, now)
        self._fail_if_certain(target, assessment)
        return assessment

    def unreachable(self, target: Target, reason: str) -> Assessment:
        return self._watch(target).unreachable(reason)

    def probe_due(self, target: Target, now: float) -> bool:
        return self._watch(target).probe_due(now)

    def next_probe(self) -> float | None:
        """The earliest time a probe of an undecided container falls due (None: none planned)."""
        due = [
            watch.next_probe
            for app in self.undecided()
            for _, watch in self._watches[app]
            if watch.next_probe is not None
        ]
        return min(due, default=None)

    def end_round(self) -> bool:
        """Decide the apps this round settled; True when the host commands should run now."""
        stable = [app for app in self.undecided() if self._all_stable(app)]
        if not self.settings.commands or self.failed:
            # No device-level check to wait for (or it is skipped: some app already failed).
            self.passed.update(stable)
            return False
        # Host commands judge the whole device: only once every undecided app is healthy.
        return bool(stable) and len(stable) == len(self.undecided())

    def host_checks(self, reason: str | None) -> None:
        """The host commands' result for this round: None = all exited 0."""
        self._host_reason = reason
        if reason is None:
            self.passed.update(self.undecided())

    def expire(self, timeout: float) -> None:
        """The deadline passed: every undecided app fails with its containers' last reasons."""
        for app in self.undecided():
            pending = [
                f"{watch.container}: {watch.last.reason}"
                for _, watch in self._watches[app]
                if watch.last.state is not State.STABLE
            ]
            if not pending and self._host_reason is not None:
                pending = [self._host_reason]
            self.failed[app] = f"not healthy within {timeout:g} s: " + "; ".join(pending)

    def _watch(self, target: Target) -> ContainerWatch:
        for known, watch in self._watches[target.app]:
            if known is target or known == target:
                return watch
        raise KeyError(f"{target.app}/{target.container}: not a target of this wait")

    def _all_stable(self, app: str) -> bool:
        return all(watch.last.state is State.STABLE for _, watch in self._watches[app])

    def _fail_if_certain(self, target: Target, assessment: Assessment) -> None:
        if assessment.state is State.FAILED and target.app not in self.failed:
            self.failed[target.app] = f"{target.container}: {assessment.reason}"


def request_path(path: str) -> str:
    """The request target of an http check: its path, rooted."""
    return path if path.startswith("/") else f"/{path}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
