"""Waiting on a condition in tests: polled until it holds or a generous deadline passes.

The suite runs on loaded shared machines with several xdist workers, so deadlines are long and
each wait ends as soon as its condition holds; a fixed sleep is never the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

WAIT = 60.0  # seconds: generous on a loaded machine, and no wait lasts longer than it must


def eventually(
    check: Callable[[], object],
    what: str,
    timeout: float = WAIT,
    every: float = 0.2,
    *,
    show: Callable[[], str] | None = None,
) -> None:
    """Polls `check` every `every` seconds until it is truthy; fails the test naming `what`
    (and what `show()` says, for the failure's reader) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f"\n{show()}" if show is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}{detail}")
        time.sleep(every)
