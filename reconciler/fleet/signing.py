"""Which authority signs a release for `reconciler release` (SPEC 2.2): a lab CA or sigstore.

A lab CA directory (`--lab-ca`, see `lab_ca`) for air-gapped labs, demos and tests; otherwise
sigstore's public-good instance through `adapters.sigstore_signer`. Either way the result is a
sigstore bundle of the release's exact bytes, and a failure is a `SigningError`.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.adapters.sigstore_signer import SigningError, sign_with_public_good

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
