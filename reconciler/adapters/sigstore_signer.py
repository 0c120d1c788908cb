"""Signing a release's exact bytes with sigstore's public-good instance (SPEC 2.2).

Uses the ambient OIDC credential of a CI job (GitHub Actions with `permissions: id-token: write`,
GitLab, Buildkite, CircleCI, GCP). This module is the boundary where sigstore's and the network's
exceptions become `SigningError`. Which authority signs (this one or a lab CA) is chosen in
`fleet.signing`; this module must not know the lab CA.

sigstore is imported inside the function: it costs ~0.3 s and ~47 MB, and most verbs never sign.
"""

from __future__ import annotations

import os

from reconciler.errors import ReconcilerError

NO_CREDENTIAL = (
    "signing needs an ambient OIDC credential: run `reconciler release` in CI with "
    "`permissions: id-token: write` (GitHub Actions), or sign with a lab CA (`--lab-ca DIR`)"
)

# Set by the CI systems whose credentials sigstore's detector (the `id` package) can fetch. Its GCP
# branch also fires on any Compute Engine VM and asks the metadata server, so without one of these
# markers we do not run the detector at all: no surprise network call outside CI.
_CI_MARKERS = (
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
)


class SigningError(ReconcilerError):
    """The release could not be signed; nothing was written."""


def sign_with_public_good(data: bytes, *, identity: str | None, issuer: str | None) -> bytes:
    """Sign `data` with a certificate for the CI's OIDC identity; the bundle's JSON bytes.

    When `identity` (and `issuer`) are given they are checked against the issued certificate,
    so CI fails rather than publish a release that devices pinning that identity would refuse.
    """
    if not any(os.environ.get(marker) for marker in _CI_MARKERS):
        raise SigningError(NO_CREDENTIAL)

    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken, detect_credential
    from sigstore.sign import SigningContext
    from sigstore.verify import policy

    try:
        token = detect_credential()
    except Exception as exc:  # sigstore.oidc.IdentityError, or a transport error beneath it
        raise SigningError(f"{NO_CREDENTIAL}; the CI credential failed: {exc}") from exc
    if token is None:
        raise SigningError(NO_CREDENTIAL)

    try:
        trust_config = ClientTrustConfig.production()  # TUF refresh: current Fulcio, Rekor, TSA
        # Rekor v1 entries carry a signed integratedTime (SET), the time source devices use;
        # v2 entries rely on a TSA timestamp alone.
        trust_config.force_tlog_version = 1
        context = SigningContext.from_trust_config(trust_config)
        with context.signer(IdentityToken(token)) as signer:
            bundle = signer.sign_artifact(data)
    except Exception as exc:  # sigstore errors, TUF, HTTP: all mean "not signed", with the reason
        raise SigningError(f"signing with sigstore public-good failed: {exc}") from exc

    if identity:
        try:
            policy.Identity(identity=identity, issuer=issuer).verify(bundle.signing_certificate)
        except Exception as exc:
            raise SigningError(
                f"the CI's certificate does not match the identity devices pin: {exc}"
            ) from exc
    return bundle.to_json().encode()
