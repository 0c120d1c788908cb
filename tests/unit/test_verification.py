"""verification: the trust decision, its reasons, its cache, and that the daemon stays small."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.adapters import sigstore_verifier
from reconciler.errors import VerificationError
from reconciler.fleet import lab_ca

ID = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
ISS = "https://token.actions.example.test"
DATA = b'{"schema": "reconciler/release/v1", "version": 1}'


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("verification") / "ca"
    lab_ca.init(directory)
    return directory


@pytest.fixture(scope="module")
def bundle(ca: Path) -> bytes:
    return lab_ca.sign(ca, DATA, identity=ID, issuer=ISS)


def request(ca: Path, artifact: bytes, bundle: bytes, identities=((ID, ISS),)) -> dict:
    return {
        "artifact": base64.b64encode(artifact).decode(),
        "bundle": base64.b64encode(bundle).decode(),
        "identities": [list(i) for i in identities],
        "trusted_root": str(ca / "trusted_root.json"),
    }


def test_a_bundle_over_these_bytes_by_a_trusted_identity_is_accepted(ca: Path, bundle: bytes):
    answer = sigstore_verifier.verify_request(request(ca, DATA, bundle))
    assert answer == {"ok": True, "identity": ID, "issuer": ISS}


def test_any_one_of_several_identities_may_sign(ca: Path, bundle: bytes):
    identities = (("someone@example.test", ISS), (ID, ISS))
    assert sigstore_verifier.verify_request(request(ca, DATA, bundle, identities))["ok"] is True


@pytest.mark.parametrize(
    ("artifact", "bundle_bytes", "identities", "reason"),
    [
        (DATA + b" ", None, ((ID, ISS),), "invalid_signature"),
        (DATA, None, (("other@example.test", ISS),), "wrong_identity"),
        (DATA, None, ((ID, "https://evil.example.test"),), "wrong_identity"),
        (DATA, b'{"mediaType": "nonsense"}', ((ID, ISS),), "malformed"),
        (DATA, b"\xff\xfe not json", ((ID, ISS),), "malformed"),
    ],
)
def test_each_kind_of_failure_has_its_metric_reason(
    ca: Path, bundle: bytes, artifact, bundle_bytes, identities, reason
):
    answer = sigstore_verifier.verify_request(
        request(ca, artifact, bundle_bytes or bundle, identities)
    )
    assert answer["ok"] is False
    assert answer["reason"] == reason
    assert answer["message"]


def test_a_missing_trusted_root_fails_closed(ca: Path, bundle: bytes, tmp_path: Path):
    asked = request(ca, DATA, bundle) | {"trusted_root": str(tmp_path / "absent.json")}
    answer = sigstore_verifier.verify_request(asked)
    assert answer["ok"] is False and "trusted root" in answer["message"]


def test_the_public_good_root_shipped_with_sigstore_is_used_when_none_is_configured(
    bundle: bytes, ca: Path
):
    asked = request(ca, DATA, bundle) | {"trusted_root": None}
    answer = sigstore_verifier.verify_request(asked)
    assert answer["ok"] is False  # a lab bundle is not public-good: refused, offline
    assert answer["reason"] == "invalid_signature"


def test_the_child_process_verifies_and_the_result_is_cached(ca: Path, bundle: bytes):
    checker = sigstore_verifier.ReleaseVerifier(
        identities=[(ID, ISS)], trusted_root=str(ca / "trusted_root.json")
    )
    signer = checker.verify(DATA, bundle, file="r.json")
    assert signer == sigstore_verifier.Signer(ID, ISS)
    checker.timeout = 0  # a second child could not run now: the answer must come from cache
    assert checker.verify(DATA, bundle, file="r.json") == signer


def test_a_refusal_is_cached_too_but_a_child_that_did_not_run_is_not(ca: Path, bundle: bytes):
    checker = sigstore_verifier.ReleaseVerifier(
        identities=[("other@example.test", ISS)], trusted_root=str(ca / "trusted_root.json")
    )
    with pytest.raises(VerificationError) as first:
        checker.verify(DATA, bundle, file="r.json")
    assert first.value.reason == "wrong_identity"
    checker.timeout = 0
    with pytest.raises(VerificationError) as again:
        checker.verify(DATA, bundle, file="r.json")
    assert again.value is first.value
    with pytest.raises(sigstore_verifier.VerifierDidNotRun):
        checker.verify(DATA + b"x", bundle, file="r.json")


def test_no_bundle_means_unsigned():
    checker = sigstore_verifier.ReleaseVerifier(identities=[(ID, ISS)], trusted_root=None)
    with pytest.raises(VerificationError) as caught:
        checker.verify(DATA, None, file=".fleet/release.json")
    assert caught.value.reason == "unsigned"
    assert ".fleet/release.json.sigstore.json: missing" in str(caught.value)


def test_the_daemon_never_imports_sigstore():
    code = (
        "import sys, reconciler.device.daemon, reconciler.device.cycle, "
        "reconciler.adapters.sigstore_verifier, reconciler.device.wiring; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('sigstore', 'rekor_types', 'tuf'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == []
