"""Is this release signed by a trusted identity? (SPEC 2.2, device side)

Owns the device's trust decision over the exact bytes of `.fleet/release.json` and its sigstore
bundle. The sigstore Verifier itself runs in a short-lived child process (`python -m
reconciler.adapters.sigstore_child`): importing `sigstore.verify` costs ~47 MB of resident
memory for the life of a process, and a daemon that verifies only when a new release appears
should not carry that. The child costs ~0.3 s per new release; results are cached by the digests
of both files, so an unchanged release is never verified twice by one daemon.

Fails closed: a missing bundle, a child that crashes, times out or answers anything but a clean
"ok" is a VerificationError with a metric reason (`unsigned`, `invalid_signature`,
`wrong_identity`, `malformed`). Must not: use the network (the trusted root is a file, or the
public-good root shipped inside the sigstore package, read without TUF and without writing a
cache), or accept a bundle for other bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence

from reconciler.core.settings import TrustConfig
from reconciler.core.trust import MAX_BUNDLE_BYTES
from reconciler.errors import VerificationError
from reconciler.ports import Signer

BUNDLE_SUFFIX = ".sigstore.json"
CHILD_TIMEOUT = 60.0
CHILD_MODULE = "reconciler.adapters.sigstore_child"


class VerifierDidNotRun(VerificationError):
    """The child could not be started or timed out: refused now, tried again next cycle."""


def for_trust(trust: TrustConfig) -> ReleaseVerifier:
    """The verifier of a `trust` config: its identities and trusted root."""
    return ReleaseVerifier(
        identities=[(i.identity, i.issuer) for i in trust.identities],
        trusted_root=trust.trusted_root,
    )


class ReleaseVerifier:
    """Verifies (release bytes, bundle bytes) pairs against one trust config, with a cache."""

    def __init__(
        self,
        *,
        identities: Sequence[tuple[str, str]],
        trusted_root: str | None,
        timeout: float = CHILD_TIMEOUT,
    ) -> None:
        self.identities = tuple(identities)
        self.trusted_root = trusted_root
        self.timeout = timeout
        # Same bytes, same answer: a daemon verifies each release once, and refuses a bad one
        # once (not once per poll). Only a child that did not run is tried again.
        self._verified: dict[tuple[str, str], Signer | VerificationError] = {}

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> Signer:
        """The signer of `artifact`, or VerificationError saying why it is not trusted."""
        if bundle is None:
            raise VerificationError(
                f"{file}{BUNDLE_SUFFIX}: missing: the release is not signed", reason="unsigned"
            )
        if len(bundle) > MAX_BUNDLE_BYTES:
            raise VerificationError(
                f"{file}{BUNDLE_SUFFIX}: larger than {MAX_BUNDLE_BYTES} bytes", reason="malformed"
            )
        if not self.identities:
            raise VerificationError(
                "trust.identities is empty: no signer is trusted", reason="wrong_identity"
            )
        key = (hashlib.sha256(artifact).hexdigest(), hashlib.sha256(bundle).hexdigest())
        known = self._verified.get(key)
        if isinstance(known, VerificationError):
            raise known
        if known is not None:
            return known
        try:
            signer = self._run_child(artifact, bundle, file=file)
        except VerificationError as exc:
            if not isinstance(exc, VerifierDidNotRun):
                self._verified[key] = exc
            raise
        self._verified[key] = signer
        return signer

    def _run_child(self, artifact: bytes, bundle: bytes, *, file: str) -> Signer:
        request = json.dumps(
            {
                "artifact": base64.b64encode(artifact).decode(),
                "bundle": base64.b64encode(bundle).decode(),
                "identities": [list(pair) for pair in self.identities],
                "trusted_root": self.trusted_root,
            }
        ).encode()
        try:
            done = subprocess.run(
                [sys.executable, "-m", CHILD_MODULE],
                input=request,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VerifierDidNotRun(
                f"{file}: the verifier did not run: {exc}", reason="invalid_signature"
            ) from None
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise VerificationError(
                f"{file}: the verifier failed (exit {done.returncode}): {tail[0]}",
                reason="invalid_signature",
            )
        if answer.get("ok") is True and done.returncode == 0:
            return Signer(identity=str(answer["identity"]), issuer=str(answer["issuer"]))
        reason = str(answer.get("reason") or "invalid_signature")
        raise VerificationError(f"{file}: {answer.get('message') or 'rejected'}", reason=reason)


def verify_request(request: dict[str, object]) -> dict[str, object]:
    """The child's work, importable for tests: verify one request, answer a plain dict.

    First the signature, certificate chain, SCT and log proofs with no identity policy (so a
    forged or tampered bundle is `invalid_signature`), then the identity (`wrong_identity`).
    """
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier, policy

    try:
        artifact = base64.b64decode(str(request["artifact"]), validate=True)
        bundle_json = base64.b64decode(str(request["bundle"]), validate=True)
        identities = request["identities"]
        if not isinstance(identities, list):
            raise TypeError(f"identities is not a list but {type(identities).__name__}")
        pairs = [(str(i), str(s)) for i, s in identities]
    except (KeyError, ValueError, TypeError) as exc:
        return {"ok": False, "reason": "malformed", "message": f"bad request: {exc}"}
    try:
        root_path = request.get("trusted_root") or _public_good_root()
        verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root_path)))
    except Exception as exc:  # any failure to load trust fails closed
        return {"ok": False, "reason": "invalid_signature", "message": f"trusted root: {exc}"}
    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as exc:
        return {"ok": False, "reason": "malformed", "message": f"bundle: {_short(exc)}"}
    try:
        verifier.verify_artifact(artifact, bundle, policy.UnsafeNoOp())
    except Exception as exc:  # fail closed on anything the verifier raises
        return {
            "ok": False,
            "reason": "invalid_signature",
            "message": f"signature does not verify: {_short(exc)}",
        }
    for identity, issuer in pairs:
        try:
            policy.Identity(identity=identity, issuer=issuer).verify(bundle.signing_certificate)
        except Exception:  # noqa: S112 - try the next trusted identity
            continue
        return {"ok": True, "identity": identity, "issuer": issuer}
    wanted = "; ".join(f"{i} (issuer {s})" for i, s in pairs)
    return {
        "ok": False,
        "reason": "wrong_identity",
        "message": f"signed by an identity that is not trusted; trusted: {wanted}",
    }


def _public_good_root() -> str:
    """The public-good trusted_root.json shipped inside the sigstore package (no TUF, no
    network, no cache written). Baking a fresher file and naming it in trust.trusted_root is
    better: keys rotate only with package updates otherwise."""
    from importlib import resources

    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    return str(store / "trusted_root.json")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
