"""Output helpers shared by the fleet repo verbs (`validate`, `plan`, `release`).

Everything printed from a fleet repo passes through `safe`: file names and values come from the
repo, may hold newlines or terminal escapes, and end up in CI logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

from reconciler import text
from reconciler.errors import Problem


def print_problems(problems: Iterable[Problem], *, out: TextIO) -> None:
    for problem in problems:
        print(safe(str(problem)), file=out)


def safe(untrusted: str) -> str:
    """One printable, bounded line: file names and values may hold newlines or escapes."""
    return text.one_line(untrusted)


def utc_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
