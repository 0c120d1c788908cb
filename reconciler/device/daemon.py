"""`reconciler run`: cycles every poll interval until SIGTERM (SPEC 3.3).

Shell. Owns the loop's timing and its wake-ups: the poll interval with jitter; back-off while
every remote is down; SIGHUP or a change to the config file or `device.labels_dir` reloads the
settings and cycles now; a change under a local source or mirror directory (an air-gapped
drop, a published tree on a USB stick, one inserted while the daemon runs) or SIGUSR1
(`reconciler sync`) cycles now; SIGTERM/SIGINT stop between cycles (a cycle in progress
finishes: it records its transaction, so even a hard kill leaves a state the next run finishes).
A config that became invalid is logged and the last good one kept: the device goes on running.
Must not: run two cycles at once, or leave the pid file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import logs, text
from reconciler.core import backoff, settings
from reconciler.device import control, deferrals, sdnotify, state_store, wiring
from reconciler.device import wakeups as wakeups_mod
from reconciler.errors import SettingsError

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

_log = logging.getLogger("reconciler.daemon")

MAX_BACKOFF_FACTOR = 5  # while the fleet repo is unreachable, wait up to 5 poll intervals


def run(config_path: str, device_settings: settings.DeviceSettings) -> int:
    """Run until SIGTERM; returns the exit code (0 on a clean stop)."""
    from reconciler.device.metrics import Metrics

    store = state_store.StateStore(device_settings.state_dir)
    wakeups = wakeups_mod.Wakeups()
    with (
        contextlib.closing(wakeups),
        store.lock(),
        control.pid_file(Path(device_settings.state_dir)),
        wakeups_mod.handling_signals(wakeups),
    ):
        metrics = Metrics(remotes=wiring.source_urls(device_settings))
        server = metrics.serve(device_settings.metrics.listen)
        watcher = wakeups_mod.Watcher(config_path, device_settings, wakeups)
        watcher.start()
        logs.event(
            _log,
            logging.INFO,
            "daemon.start",
            device=device_settings.device.name,
            poll_interval=device_settings.source.poll_interval,
            metrics=f"{server.host}:{server.port}" if server else "off",
        )
        try:
            _loop(config_path, device_settings, metrics, wakeups, watcher)
        finally:
            watcher.stop()
            if server is not None:
                server.shutdown()
    sdnotify.notify("STOPPING=1")
    logs.event(_log, logging.INFO, "daemon.stop")
    return 0


def _loop(
    config_path: str,
    current: settings.DeviceSettings,
    metrics: Metrics,
    wakeups: wakeups_mod.Wakeups,
    watcher: wakeups_mod.Watcher,
) -> None:
    """Cycle, sleep, repeat. The adapters and the Reconciler (its release cache and crash-loop
    back-off) live across cycles and are rebuilt only when the settings change.

    Nothing raised here ends the daemon: a cycle turns every exception into a failed outcome,
    and what fails around it (building the adapters, a rollback request) is logged with its
    traceback, counted as a failed cycle and backed off like an unreachable remote. Only
    SIGTERM/SIGINT end the loop.
    """
    reason = "start"
    ready = False
    crashes = 0  # rounds in a row that failed outside a cycle
    dev: wiring.Device | None = None
    adapters = contextlib.ExitStack()
    try:
        while not wakeups.stop:
            logs.event(_log, logging.INFO, "cycle.start", trigger=reason)
            try:
                if dev is None:
                    dev = adapters.enter_context(wiring.open_device(current, metrics=metrics))
                _round(dev, current)
                crashes = 0
            except Exception as exc:  # the daemon's last net: log, count, back off, go on
                crashes += 1
                _round_failed(exc, metrics)
                adapters.close()  # rebuilt next round, in case they are what broke
                dev = None
            if not ready:  # systemd: started once the first cycle is over, good or bad
                sdnotify.notify("READY=1")
                ready = True
            if current.metrics.pushgateway:
                grouping = {"device": current.device.name}
                metrics.push(current.metrics.pushgateway, "reconciler", grouping)
            failures = max(crashes, dev.reconciler.backoff_failures if dev else 0)
            try:
                wait = _next_wait(current, failures)
                if dev is not None and not failures:
                    wait = _until_deferral_ends(dev, current, wait)
            except (OverflowError, ValueError):  # an interval too large to compute with
                wait = wakeups_mod.MAX_SLEEP
            _sleep_with_watchdog(wakeups, wait)
            if wakeups.stop:
                return
            reason, reload = wakeups.take()
            if reload:
                fresh = _reload(config_path, current)
                if fresh != current:
                    current = fresh
                    try:
                        watcher.update(current)
                    except OSError as exc:  # an unreadable new labels_dir or source path
                        logs.event(_log, logging.ERROR, "watch.failed", reason=str(exc))
                    adapters.close()  # rebuild the adapters on the new settings
                    dev = None
    finally:
        adapters.close()


def _round(dev: wiring.Device, current: settings.DeviceSettings) -> None:
    """One wake-up: a rollback asked for by `reconciler rollback`, then a cycle."""
    request = Path(current.state_dir) / control.ROLLBACK_REQUEST
    if request.exists():
        logs.event(_log, logging.WARNING, "rollback.requested")
        dev.reconciler.roll_back_by_hand()
        request.unlink(missing_ok=True)
    dev.reconciler.cycle()


def _round_failed(exc: Exception, metrics: Metrics) -> None:
    message = text.one_line(f"{type(exc).__name__}: {exc}")
    logs.event(
        _log,
        logging.ERROR,
        "cycle.crashed",
        what="daemon",
        error=message,
        action="backing off; the next cycle starts afresh",
        exc_info=exc,
    )
    metrics.record_cycle("failed", 0.0)


def _sleep_with_watchdog(wakeups: wakeups_mod.Wakeups, seconds: float) -> None:
    """Sleep like `wakeups.sleep`, pinging systemd's watchdog often enough on the way: a loop
    that stops pinging (hung in a cycle) gets restarted."""
    interval = sdnotify.watchdog_interval()
    sdnotify.notify("WATCHDOG=1")
    if interval is None:
        wakeups.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while not (wakeups.reason or wakeups.stop):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        wakeups.sleep(min(left, interval))
        sdnotify.notify("WATCHDOG=1")


def _next_wait(current: settings.DeviceSettings, failures: int) -> float:
    interval = current.source.poll_interval
    jitter = current.source.jitter
    if failures:
        return backoff.delay(
            failures,
            initial=interval,
            cap=interval * MAX_BACKOFF_FACTOR,
            jitter=jitter,
        )
    return backoff.jittered(interval, jitter=jitter)


def _until_deferral_ends(
    dev: wiring.Device, current: settings.DeviceSettings, wait: float
) -> float:
    """`wait`, or less when revisions wait for a window or a timed hold that ends sooner: the
    daemon wakes then (spread by the poll jitter, so a fleet does not fetch all at once)."""
    selection = dev.reconciler.last_selection
    if selection is None or not any(w.kind in ("window", "hold") for w in selection.waiting):
        return wait
    now = dev.reconciler.clock.now()
    due = deferrals.next_change(current, dev.reconciler.store, now)
    if due is None:
        return wait
    spread = backoff.jittered(current.source.jitter * current.source.poll_interval / 2, jitter=1.0)
    return min(wait, max(0.0, (due - now).total_seconds()) + spread)


def _reload(config_path: str, current: settings.DeviceSettings) -> settings.DeviceSettings:
    """The new settings, or the current ones when the new config or a labels.d file is
    invalid, unreadable or crashes its parser (logged; `status` reads the same files and
    shows the problem)."""
    try:
        fresh = wiring.load_settings(config_path)
    except SettingsError as exc:
        for problem in exc.problems:
            logs.event(
                _log,
                logging.ERROR,
                "config.invalid",
                problem=str(problem),
                action="kept the previous config",
            )
        return current
    except Exception as exc:  # a parser bug on hostile bytes must not end the daemon
        logs.event(
            _log,
            logging.ERROR,
            "config.invalid",
            problem=wiring.load_failure(config_path, current.device.labels_dir, exc),
            action="kept the previous config",
            exc_info=exc,
        )
        return current
    if fresh.state_dir != current.state_dir:
        logs.event(
            _log,
            logging.ERROR,
            "config.state_dir_changed",
            action="kept the previous state_dir until restart",
        )
        fresh = dataclasses.replace(fresh, state_dir=current.state_dir)
    logs.event(_log, logging.INFO, "config.reloaded", labels=fresh.labels)
    return fresh
