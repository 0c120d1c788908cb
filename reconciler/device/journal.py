"""The cycle's journal: how each outcome is logged, counted and recorded in `state_dir`.

Shell: `guarded` turns anything a step raises into a failed outcome (logged, a bug with its
traceback; saved as `last_error` when state.json can be written), so the daemon never dies;
`finish` logs and records every outcome; refusals are counted by their typed reason. Source
credentials never reach a log line or state.json.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler import logs, text
from reconciler.core.settings import DeviceSettings
from reconciler.core.urls import redact
from reconciler.device import converge, state_store
from reconciler.device.outcome import CycleOutcome
from reconciler.errors import ReconcilerError, ReleaseError, RevisionRejected, VerificationError

if TYPE_CHECKING:
    from reconciler.device.metrics import Metrics

_log = logging.getLogger("reconciler.cycle")


class Journal:
    """Logs, metrics and `last_error` / `last_verification_failure` of the cycles."""

    def __init__(
        self, settings: DeviceSettings, store: state_store.StateStore, metrics: Metrics | None
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.crashed = False  # the last guarded run raised

    def guarded(self, what: str, run: Callable[[], CycleOutcome]) -> CycleOutcome:
        """`run()`, with anything it raises turned into a failed outcome: logged (a bug with
        its traceback), saved as `last_error` when `state.json` can be written. A state_dir that
        cannot be read or written, a bug, an adapter raising what it should not: the daemon
        lives on and backs off, and the next cycle starts afresh from state_dir and the engine.
        """
        self.crashed = False
        try:
            return run()
        except Exception as exc:  # the one place every failure is caught
            self.crashed = True
            message = self.describe(exc)
            # A state_dir that cannot be read or written is a fault of the device, reported
            # by its message; anything else is a bug, and its traceback is what fixes it.
            expected = isinstance(exc, (OSError, ReconcilerError))
            logs.event(
                _log,
                logging.ERROR,
                "cycle.aborted",
                what=what,
                error=message,
                exc_info=None if expected else exc,
            )
            outcome = CycleOutcome("failed", f"{what} failed: {message}")
            logs.event(
                _log,
                logging.ERROR,
                "cycle.done",
                result="failed",
                changes=0,
                message=outcome.message,
            )
            self.save_error_if_readable(outcome.message)
            return outcome

    def finish(self, outcome: CycleOutcome, *, failed: str | None = None) -> CycleOutcome:
        if failed is not None and outcome.result in ("unchanged", "converged"):
            outcome = CycleOutcome("failed", failed, outcome.actions)
        level = logging.INFO if outcome.result in ("unchanged", "converged") else logging.ERROR
        logs.event(
            _log,
            level,
            "cycle.done",
            result=outcome.result,
            changes=len(converge.container_changes(outcome.actions)),
            message=outcome.message,
        )
        self.save_error(outcome.message if outcome.result in ("failed", "rolled_back") else None)
        return outcome

    def count_fetch_errors(self, failures: tuple[tuple[str, str], ...]) -> None:
        if self.metrics is not None:
            for remote, _reason in failures:
                self.metrics.record_fetch_error(remote)

    def record_rejection(self, exc: RevisionRejected) -> None:
        reason = exc.reason if isinstance(exc, (VerificationError, ReleaseError)) else "malformed"
        if self.metrics is not None:
            self.metrics.record_verification_failure(reason)
        current = self.store.load()
        message = str(exc)
        if current.last_verification_failure != message:
            self.store.save(replace(current, last_verification_failure=message))

    def save_error(self, message: str | None) -> None:
        current = self.store.load()
        if current.last_error != message:
            self.store.save(replace(current, last_error=message))

    def save_error_if_readable(self, message: str) -> None:
        """Record `message` as `last_error` when state.json can be read and written. An
        unreadable state.json is never overwritten (it holds the last good state, a person
        must look), and a full or read-only state_dir cannot take it: the log and
        `reconciler_cycles_total{result="failed"}` carry it then, and `status` checks
        state_dir itself."""
        try:
            self.save_error(message)
        except Exception as exc:  # already failing: report and go on
            logs.event(
                _log,
                logging.ERROR,
                "state.error_not_saved",
                error=self.describe(exc),
                detail="last_error could not be recorded in state_dir",
            )

    def describe(self, exc: BaseException) -> str:
        """One bounded line for an exception nobody handled, source credentials redacted."""
        if isinstance(exc, (ReconcilerError, OSError)):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        for url in (self.settings.source.url, *self.settings.source.mirrors):
            if redact(url) != url:
                message = message.replace(url, redact(url))
        return text.one_line(message)
