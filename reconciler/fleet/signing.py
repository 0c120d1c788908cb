"""Signing in `reconciler release` (SPEC 2.2): which authority signs (a lab CA or sigstore), and
the bundle written beside the release, or the previous files put back when signing fails.

A lab CA directory (`--lab-ca`, see `lab_ca`) for air-gapped labs, demos and tests; otherwise
sigstore's public-good instance through `adapters.sigstore_signer`. Either way the result is a
sigstore bundle of the release's exact bytes, and a failure is a `SigningError`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from reconciler import text
from reconciler.adapters import checkout
from reconciler.adapters.sigstore_signer import SigningError, sign_with_public_good
from reconciler.core import release
from reconciler.errors import ProblemsError, ReconcilerError

__all__ = ["SigningError", "sign_release"]


def sign_release(
    data: bytes, *, lab_ca: Path | None, identity: str | None, issuer: str | None
) -> bytes:
    """Sign `data`; returns the bundle's JSON bytes (`.fleet/release.json.sigstore.json`).

    With `lab_ca`, `identity` and `issuer` name what the lab certificate says. Without it, the
    identity comes from the CI's OIDC token; when `identity` (and `issuer`) are given they are
    checked against the issued certificate, so CI fails rather than publish a release that
    devices pinning that identity would refuse.
    """
    if lab_ca is not None:
        return _sign_with_lab_ca(data, lab_ca, identity=identity, issuer=issuer)
    return sign_with_public_good(data, identity=identity, issuer=issuer)


def _sign_with_lab_ca(
    data: bytes, directory: Path, *, identity: str | None, issuer: str | None
) -> bytes:
    if not identity or not issuer:
        raise SigningError(
            "signing with --lab-ca needs the identity and the issuer to put in the certificate "
            "(--identity, --issuer): the ones the devices' trust.identities pin"
        )
    # cryptography and rfc8785 load only when a lab CA signs.
    from reconciler.fleet import lab_ca

    try:
        return lab_ca.sign(directory, data, identity=identity, issuer=issuer)
    except lab_ca.LabCAError as exc:
        raise SigningError(f"lab CA signing failed: {exc}") from exc


def sign_written_release(
    root: Path,
    data: bytes,
    *,
    lab_ca: Path | None,
    identity: str | None,
    issuer: str | None,
    err: TextIO | None = None,
) -> int:
    """Sign the release bytes just written and put the bundle beside them; 0 or 1."""
    err = err or sys.stderr
    try:
        bundle = sign_release(data, lab_ca=lab_ca, identity=identity, issuer=issuer)
    except ReconcilerError as exc:
        print(f"release: signing failed, {release.BUNDLE_PATH} not written: {exc}", file=err)
        return 1
    try:
        checkout.replace_file(root, release.BUNDLE_PATH, bundle)
    except (OSError, ProblemsError) as exc:
        print(f"release: cannot write {release.BUNDLE_PATH}: {text.one_line(str(exc))}", file=err)
        return 1
    print(f"signed: {release.BUNDLE_PATH}", file=err)
    return 0


def read_if_present(root: Path, rel: str) -> bytes | None:
    """The work-tree file `rel` as it is before `release` replaces it, to put back if signing
    fails; None when absent or unusable (a symlink, a FIFO, over the release size limit:
    `release` refuses the first two, and devices refuse the last)."""
    try:
        data = checkout.read_optional(root, rel, limit=release.MAX_BYTES + 1)
    except ProblemsError:
        return None
    return data if data is not None and len(data) <= release.MAX_BYTES else None


def restore(root: Path, rel: str, previous: bytes | None) -> None:
    """Put back what `rel` held before (or remove it if it did not exist or was unusable)."""
    if previous is None:
        if checkout.link_problem(root, rel) is None:
            (root / rel).unlink(missing_ok=True)
    else:
        checkout.replace_file(root, rel, previous)


def remove_stale_bundle(root: Path, *, err: TextIO | None = None) -> None:
    """`release --no-sign` rewrote release.json: an old bundle no longer matches it."""
    stale = root / release.BUNDLE_PATH
    if checkout.link_problem(root, release.BUNDLE_PATH) is None and stale.is_file():
        stale.unlink()
        print(
            f"release: removed {release.BUNDLE_PATH}: it signed the previous release",
            file=err or sys.stderr,
        )
