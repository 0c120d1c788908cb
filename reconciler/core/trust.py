"""The one trusted-release object (SPEC 2.2, 3.2 steps 2-3), shared by the device and `verify`.

Modelled on python-tuf's TrustedMetadataSet: the caller fetches bytes and asks the verifier for
a verdict; this module holds what was accepted and refuses, with a typed reason, whatever a
device must not apply. Order: the signature verdict (a `Signer`, or None only when the trust
config allows unsigned releases), then the release's own size cap and format, then every pinned
file's size cap and sha256; succession (no older version, no other release of the applied
version) and expiry are judged against the applied release and the time of each use.

Pure: bytes and values in, values out or a RevisionRejected. Must not: fetch, verify a signature
itself (an adapter does, in a child process), or log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from reconciler.core import release
from reconciler.errors import Problem, Reason, ReleaseError, VerificationError
from reconciler.ports import Signer

# Refused unread over these, on the device and in `verify` alike.
MAX_PINNED_FILE_BYTES = 1024 * 1024  # one manifest
MAX_BUNDLE_BYTES = 256 * 1024  # a sigstore bundle is a few KiB


class ReleaseTrust:
    """A release whose bytes a trusted identity signed (or that the config lets in unsigned),
    parsed; `accept_files` then turns it into a `TrustedRelease` once its pins hold."""

    def __init__(self, data: bytes, *, signer: Signer | None) -> None:
        """`signer` is the verifier's verdict over exactly `data`; None only when the trust
        config allows unsigned releases. Raises ReleaseError (malformed) on bad bytes."""
        self.data = data
        self.signer = signer
        self.release = release.parse(data)  # the size cap first, then the format
        self.digest = release.digest(data)

    @property
    def pinned_paths(self) -> list[str]:
        """The files to fetch at the release's commit, in a stable order."""
        return sorted(self.release.pins)

    def accept_files(self, files: Mapping[str, bytes]) -> TrustedRelease:
        """The release with its pinned files, each within the cap and matching its sha256;
        ReleaseError (reason pin_mismatch) naming every file that is not."""
        problems = [
            Problem(path, "", f"is over the limit of {MAX_PINNED_FILE_BYTES} bytes")
            for path, data in sorted(files.items())
            if len(data) > MAX_PINNED_FILE_BYTES
        ]
        oversized = {p.file for p in problems}
        problems += [p for p in release.check_pins(self.release, files) if p.file not in oversized]
        if problems:
            raise ReleaseError(problems, reason=Reason.PIN_MISMATCH)
        pinned = {path: files[path] for path in self.release.pins}
        return TrustedRelease(
            data=self.data,
            digest=self.digest,
            release=self.release,
            signer=self.signer,
            files=pinned,
        )


@dataclass(frozen=True)
class TrustedRelease:
    """A release and the exact bytes of every file it pins, all checked."""

    data: bytes
    digest: str
    release: release.Release
    signer: Signer | None
    files: Mapping[str, bytes]

    def check_applicable(
        self, *, applied_version: int | None, applied_digest: str | None, now: datetime
    ) -> None:
        """See `check_applicable` (the module function)."""
        check_applicable(
            self.release,
            self.digest,
            applied_version=applied_version,
            applied_digest=applied_digest,
            now=now,
        )

    def expired(self, now: datetime) -> bool:
        return release.is_expired(self.release, now)


def check_applicable(
    candidate: release.Release,
    digest: str,
    *,
    applied_version: int | None,
    applied_digest: str | None,
    now: datetime,
) -> None:
    """Refuse a release over the applied one (an older version: rollback; the same version
    with other bytes: equivocation) or once expired: VerificationError with that reason."""
    release.check_succession(
        applied_version=applied_version,
        applied_digest=applied_digest,
        new_version=candidate.version,
        new_digest=digest,
    )
    if release.is_expired(candidate, now):
        raise VerificationError(
            f"release {candidate.version} expired at {candidate.expires:%Y-%m-%dT%H:%M:%SZ}; "
            "running apps are kept, nothing new is applied",
            reason=Reason.EXPIRED,
        )
