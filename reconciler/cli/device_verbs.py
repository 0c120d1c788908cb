"""The device verbs: `run`, `once`, `status`, `sync`, `rollback`, `hold`, `unhold` (SPEC 3.3).

Each loads the device config, then hands over to `device/` (the daemon, one cycle, the state
store) and turns the outcome into an exit code; `status` reads state and the engine without the
state lock. Heavy modules (docker, prometheus_client) are imported inside the verbs that need
them, so `reconciler --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Verbs,
    add_verb,
    load_device_settings,
)

if TYPE_CHECKING:
    from reconciler.core.settings import DeviceSettings
    from reconciler.device.cycle import CycleOutcome, Reconciler
    from reconciler.device.state_store import StateStore


def add_verbs(verbs: Verbs) -> None:
    run = add_verb(
        verbs,
        "run",
        help_text="The daemon: cycle every poll interval; reload on config/labels change and "
        "SIGHUP; stop on SIGTERM.",
        example="reconciler run --config /etc/reconciler/config.yaml",
        handler=_run,
    )
    once = add_verb(
        verbs,
        "once",
        help_text="Run one reconcile cycle, then exit (0 converged or nothing to do, 1 failed "
        "and state kept, 2 bad config, 3 rolled back).",
        example="reconciler once --config ./lab/config.yaml",
        handler=_once,
    )
    status = add_verb(
        verbs,
        "status",
        help_text="Show the applied release and commit, apps and their containers, held-back "
        "revisions, pending revisions and why (wave, window, hold, paused, aborted), the local "
        "hold and maintenance windows, last fetch and last error.",
        example="reconciler status --json | jq .apps",
        handler=_status,
    )
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sync = add_verb(
        verbs,
        "sync",
        help_text="Ask the running daemon to cycle now.",
        example="reconciler sync --config /etc/reconciler/config.yaml",
        handler=_sync,
    )
    rollback = add_verb(
        verbs,
        "rollback",
        help_text="Return every app to the previous good state by hand (the revisions left are "
        "held back until their manifest changes). With a daemon running, it does it.",
        example="reconciler rollback --config /etc/reconciler/config.yaml",
        handler=_rollback,
    )
    for parser in (run, once, status, sync, rollback):
        parser.add_argument(
            "--config",
            help="device config (default: $RECONCILER_CONFIG, then /etc/reconciler/config.yaml)",
        )
    for parser in (run, once, rollback):
        parser.add_argument(
            "--log-level", default="info", choices=("debug", "info", "warning", "error")
        )


def _on_device(
    args: argparse.Namespace, verb: str, act: Callable[[Reconciler], CycleOutcome]
) -> CycleOutcome | int:
    """Load the config, take the state lock, open the adapters and `act`; an exit code when
    any of that fails (StateLocked propagates: `rollback` hands over to a running daemon)."""
    from reconciler import logs
    from reconciler.core.state import StateError
    from reconciler.device import wiring
    from reconciler.device.state_store import StateStore

    loaded = load_device_settings(args, verb)
    if isinstance(loaded, int):
        return loaded
    _path, device_settings = loaded
    logs.setup(level=args.log_level)
    try:
        with (
            StateStore(device_settings.state_dir).lock(),
            wiring.open_device(device_settings) as dev,
        ):
            return act(dev.reconciler)
    except (StateError, OSError) as exc:
        print(f"{verb}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _once(args: argparse.Namespace) -> int:
    from reconciler.device.state_store import StateLocked

    try:
        outcome = _on_device(args, "once", lambda r: r.cycle())
    except StateLocked as exc:
        print(f"once: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, int):
        return outcome
    print(f"{outcome.result}: {outcome.message}")
    return outcome.exit_code


def _run(args: argparse.Namespace) -> int:
    from reconciler import logs
    from reconciler.core.state import StateError
    from reconciler.device import daemon
    from reconciler.device.state_store import StateLocked

    loaded = load_device_settings(args, "run")
    if isinstance(loaded, int):
        return loaded
    path, device_settings = loaded
    logs.setup(level=args.log_level)
    try:
        return daemon.run(path, device_settings)
    except (StateLocked, StateError, OSError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from reconciler import text
    from reconciler.core import state, status
    from reconciler.device import control, state_store, wiring
    from reconciler.errors import EngineError

    loaded = _status_settings(args)
    if isinstance(loaded, int):
        return loaded
    ds, config_error = loaded
    try:
        saved = state_store.StateStore(ds.state_dir).load()
    except (state.StateError, OSError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    engine = wiring.open_engine(ds, timeout=10)
    observed = volumes = engine_error = None
    try:
        observed = engine.list_managed()
        volumes = engine.list_volumes()
    except EngineError as exc:
        engine_error = str(exc)
    finally:
        engine.close()
    fetched = None
    if control.running_pid(ds.state_dir) is not None:
        from reconciler.device import metrics  # prometheus_client: only when a daemon may answer

        seconds = metrics.read_last_fetch(ds.metrics.listen)
        if seconds is not None:
            fetched = text.utc_time(datetime.fromtimestamp(seconds, UTC))
    hold_doc, window_doc = _deferral_docs(ds, state_store.StateStore(ds.state_dir))
    doc = status.report(
        saved,
        device=ds.device.name,
        state_dir=ds.state_dir,
        observed=observed,
        volumes=volumes,
        engine_error=engine_error,
        state_dir_error=state_store.write_problem(ds.state_dir),
        fetched_by_daemon=fetched,
        config_error=config_error,
        hold=hold_doc,
        maintenance=window_doc,
    )
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print("\n".join(status.render(doc)))
    return EXIT_OK


def _deferral_docs(
    ds: DeviceSettings, store: StateStore
) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """The local hold and the maintenance windows as `status` shows them, now."""
    from datetime import UTC, datetime

    from reconciler import text
    from reconciler.device import deferrals

    now = datetime.now(UTC)
    view = deferrals.read_hold(store, now)
    hold_doc: dict[str, object] | None = None
    if view.error:
        hold_doc = {"active": True, "since": None, "until": None, "reason": "", "error": view.error}
    elif view.hold is not None:
        until = view.hold.until
        hold_doc = {
            "active": view.active,
            "since": text.utc_time(view.hold.since),
            "until": None if until is None else text.utc_time(until),
            "reason": view.hold.reason,
            "error": None,
        }
    plan = deferrals.schedule(ds)
    if plan is None:
        return hold_doc, None
    opens = plan.next_open(now)
    window_doc: dict[str, object] = {
        "windows": [w.text for w in plan.windows],
        "timezone": getattr(plan.zone, "key", None) or str(plan.zone),
        "in_window": plan.in_window(now),
        "next_open": None if opens is None else text.utc_time(opens),
    }
    return hold_doc, window_doc


def _status_settings(args: argparse.Namespace) -> tuple[DeviceSettings, str | None] | int:
    """The settings `status` reports on, and why the config or labels.d cannot be loaded now.

    A labels.d file that went bad does not hide the device's status: the config alone names
    state_dir and the engine, and the problem is shown (a running daemon keeps its previous
    settings). A config file that is itself invalid is a bad config (exit 2).
    """
    import os

    from reconciler import text
    from reconciler.core import settings
    from reconciler.device import wiring
    from reconciler.errors import SettingsError

    path = settings.config_path(args.config, os.environ)
    try:
        return wiring.load_settings(path), None
    except SettingsError as exc:
        failure: Exception = exc
    except Exception as exc:  # a parser crash on a hostile labels.d file
        failure = exc
    try:
        alone = wiring.read_config(path)
    except SettingsError:
        again = load_device_settings(args, "status")  # prints every problem: exit 2
        return again if isinstance(again, int) else (again[1], None)
    if isinstance(failure, SettingsError):
        problem = text.one_line("; ".join(str(p) for p in failure.problems))
    else:
        problem = wiring.load_failure(path, alone.device.labels_dir, failure)
    return alone, problem


def _rollback(args: argparse.Namespace) -> int:
    from reconciler.device import control
    from reconciler.device.state_store import StateLocked

    try:
        outcome = _on_device(args, "rollback", lambda r: r.roll_back_by_hand())
    except StateLocked:
        loaded = load_device_settings(args, "rollback")
        if isinstance(loaded, int):
            return loaded
        problem = control.request_rollback(loaded[1].state_dir)
        if problem:
            print(f"rollback: {problem}", file=sys.stderr)
            return EXIT_FAILED
        print("rollback: asked the running daemon to roll back; see reconciler status")
        return EXIT_OK
    if isinstance(outcome, int):
        return outcome
    print(f"{outcome.result}: {outcome.message}")
    return EXIT_OK if outcome.result == "converged" else EXIT_FAILED


def _sync(args: argparse.Namespace) -> int:
    from reconciler.device import control

    loaded = load_device_settings(args, "sync")
    if isinstance(loaded, int):
        return loaded
    problem = control.send_sync(loaded[1].state_dir)
    if problem:
        print(f"sync: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print("sync: asked the daemon to cycle now")
    return EXIT_OK


# --- the local hold (SPEC 3.1, 3.3) ----------------------------------------------------------


def add_hold_verbs(verbs: Verbs) -> None:
    """`hold` and `unhold`: listed after the fleet verbs, as SPEC 3.3 does."""
    hold = add_verb(
        verbs,
        "hold",
        help_text="Hold new revisions on this device (a kiosk during opening hours, a gateway "
        "during a shift) until 'reconciler unhold' or for a while; drift correction, rollbacks, "
        "aborts and removals go on. Kept in state_dir across restarts.",
        example='reconciler hold --for 8h --reason "night shift"',
        handler=_hold,
    )
    hold.add_argument(
        "--for",
        dest="duration",
        metavar="D",
        help="end the hold by itself after this long (e.g. 30m, 8h, 2d); default: until unhold",
    )
    hold.add_argument("--reason", default="", metavar="T", help="shown by status")
    unhold = add_verb(
        verbs,
        "unhold",
        help_text="End the local hold: new revisions are taken again (within the maintenance "
        "windows).",
        example="reconciler unhold",
        handler=_unhold,
    )
    for parser in (hold, unhold):
        parser.add_argument(
            "--config",
            help="device config (default: $RECONCILER_CONFIG, then /etc/reconciler/config.yaml)",
        )


def _hold(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from reconciler import text
    from reconciler.cli.common import EXIT_CONFIG
    from reconciler.core import durations, maintenance
    from reconciler.device import state_store

    loaded = load_device_settings(args, "hold")
    if isinstance(loaded, int):
        return loaded
    until = None
    now = datetime.now(UTC).replace(microsecond=0)
    if args.duration is not None:
        try:
            seconds = durations.parse_duration(args.duration)
        except ValueError as exc:
            print(f"hold: --for: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if seconds < 1:
            print("hold: --for: must be at least 1s", file=sys.stderr)
            return EXIT_CONFIG
        until = now + timedelta(seconds=seconds)
    reason = text.one_line(args.reason, maintenance.MAX_REASON)
    store = state_store.StateStore(loaded[1].state_dir)
    hold = maintenance.Hold(since=now, until=until, reason=reason)
    try:
        store.save_hold(hold)
    except OSError as exc:
        print(f"hold: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"hold: new revisions wait on this device ({hold.describe()}); end it with unhold")
    _wake_daemon(loaded[1].state_dir)
    return EXIT_OK


def _unhold(args: argparse.Namespace) -> int:
    from reconciler.device import state_store

    loaded = load_device_settings(args, "unhold")
    if isinstance(loaded, int):
        return loaded
    try:
        removed = state_store.StateStore(loaded[1].state_dir).clear_hold()
    except OSError as exc:
        print(f"unhold: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not removed:
        print("unhold: no hold was set")
        return EXIT_OK
    print("unhold: hold ended; new revisions are taken again within the maintenance windows")
    _wake_daemon(loaded[1].state_dir)
    return EXIT_OK


def _wake_daemon(state_dir: str) -> None:
    """A running daemon sees the hold at its next cycle; asking it to cycle now makes that
    immediate (and status shows it at once). No daemon: nothing to wake."""
    from reconciler.device import control

    if control.running_pid(state_dir) is not None:
        control.send_sync(state_dir)
