"""Error kinds, named by what the loop does next (see STYLE B3).

Adapters convert foreign exceptions (docker, git, sigstore) into these at their boundary;
nothing else in the package catches third-party exception types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler import text


@dataclass(frozen=True)
class Problem:
    """One reason a file is rejected: where it is and why.

    `file` is the path as the user knows it (`apps/gw/app.yaml`, `/etc/reconciler/config.yaml`),
    `field` the dotted path inside it (`spec.containers[1].ports[0]`, empty for the whole file).
    """

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        # One line, escaped and bounded: file names, keys and values come from untrusted input.
        where = f"{self.file}: {self.field}" if self.field else self.file
        return text.one_line(f"{where}: {self.message}")


class Reason(StrEnum):
    """Why a release was refused: the `reason` label of reconciler_verification_failures_total."""

    UNSIGNED = "unsigned"
    INVALID_SIGNATURE = "invalid_signature"
    WRONG_IDENTITY = "wrong_identity"
    PIN_MISMATCH = "pin_mismatch"
    ROLLBACK = "rollback"
    EQUIVOCATION = "equivocation"
    EXPIRED = "expired"
    MALFORMED = "malformed"


class ReconcilerError(Exception):
    """Base for everything we raise on purpose."""


class ProblemsError(ReconcilerError):
    """An input has one or more problems; all of them are reported, not just the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SettingsError(ProblemsError):
    """Device config invalid: the CLI exits 2 and systemd shows why."""


class RevisionRejected(ReconcilerError):
    """Never apply this revision; wait for a new head."""


class ManifestError(ProblemsError, RevisionRejected):
    """A manifest is invalid; carries every problem of the file."""


class ReleaseError(ProblemsError, RevisionRejected):
    """`.fleet/release.json` is missing, malformed or does not match the files it pins."""

    def __init__(self, problems: Iterable[Problem], *, reason: Reason = Reason.MALFORMED) -> None:
        super().__init__(problems)
        self.reason = reason  # pin_mismatch when the pinned files do not hold


class PolicyViolation(ProblemsError, RevisionRejected):
    """A valid, signed manifest asks for something this device's policy forbids."""


class VerificationError(RevisionRejected):
    """Signature missing or invalid, wrong identity, rollback or equivocation."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        # The metric label of reconciler_verification_failures_total; a word the verifier's
        # child process made up is counted as what it is in effect, a signature not accepted.
        known = reason in Reason._value2member_map_
        self.reason = Reason(reason) if known else Reason.INVALID_SIGNATURE


class TransientError(ReconcilerError):
    """Retry with backoff."""


class FetchError(TransientError):
    """No remote of the fleet repo answered.

    `failures`: (redacted remote, reason) of every remote tried, in order, when the source tried
    several (the daemon counts `reconciler_fetch_errors_total{remote}` from it); empty when the
    failure was not a remote's (the local cache, say).
    """

    failures: tuple[tuple[str, str], ...] = ()


class RemotesFailed(FetchError):
    """Every remote of a fleet source tried failed; `failures` holds (redacted remote, reason)
    in the order tried.

    The daemon counts `reconciler_fetch_errors_total{remote}` from `failures`.
    """

    def __init__(self, action: str, failures: Sequence[tuple[str, str]]) -> None:
        self.failures: tuple[tuple[str, str], ...] = tuple(failures)
        detail = "; ".join(f"{remote}: {reason}" for remote, reason in self.failures)
        super().__init__(f"{action}: every remote failed: {detail}")


class FileRejected(ProblemsError, RevisionRejected):
    """A path at a commit is not a readable regular file (symlink, submodule, tree, too big):
    what every fleet source raises, so the cycle refuses the revision whatever the source."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__([Problem(file=path, field="", message=reason)])
        self.path = path


class EngineError(TransientError):
    """The container engine failed or is unreachable."""


class ApplyError(ReconcilerError):
    """An action failed half way: roll back. `app` names the app whose action failed."""

    def __init__(self, message: str, *, app: str | None = None) -> None:
        super().__init__(message)
        self.app = app
