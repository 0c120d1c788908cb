"""What one cycle did: the value every step of the cycle returns and `reconciler once` exits on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler import model

Result = Literal["converged", "unchanged", "failed", "rolled_back"]
EXIT_CODES: dict[Result, int] = {"converged": 0, "unchanged": 0, "failed": 1, "rolled_back": 3}


@dataclass(frozen=True)
class CycleOutcome:
    """What one cycle did; `exit_code` is what `reconciler once` returns."""

    result: Result
    message: str
    actions: tuple[model.Action, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result]
