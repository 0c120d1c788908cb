"""The lab CA signs bundles that the unmodified sigstore Verifier and CLI accept, offline.

Also: public-good signing outside CI stops with a helpful SigningError before any network use.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier, policy

from reconciler.fleet import lab_ca, signing

WORKFLOW = "https://github.com/acme/fleet/.github/workflows/release.yml@refs/heads/main"
GITHUB = "https://token.actions.githubusercontent.com"
EMAIL = "release-bot@example.com"
EMAIL_ISSUER = "https://accounts.example.com"
RELEASE = b'{"schema": "reconciler/release/v1", "version": 42}\n'

# Every variable through which sigstore's detector (the `id` package) finds a CI credential.
CI_ENVIRONMENT = (
    "GITHUB_ACTIONS",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "GITLAB_CI",
    "SIGSTORE_ID_TOKEN",
    "SIGSTORE_IDENTITY_TOKEN",
    "BUILDKITE",
    "CIRCLECI",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
)

_NETWORK_EVENTS = frozenset(
    {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"}
)
_network_recorders: list[list[tuple[str, tuple[object, ...]]]] = []


def _record_network(
    event: str,
    args: tuple[object, ...],
    # Bound now: the hook outlives the module's globals, which are cleared at interpreter exit.
    _events: frozenset[str] = _NETWORK_EVENTS,
    _recorders: list[list[tuple[str, tuple[object, ...]]]] = _network_recorders,
) -> None:
    if event in _events:
        for recorder in _recorders:
            recorder.append((event, args))


sys.addaudithook(_record_network)  # audit hooks cannot be removed; it only records while asked


@contextlib.contextmanager
def network_attempts() -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    """Collects every socket connect or name lookup made in this process inside the block."""
    recorder: list[tuple[str, tuple[object, ...]]] = []
    _network_recorders.append(recorder)
    try:
        yield recorder
    finally:
        _network_recorders.remove(recorder)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    directory = tmp_path / "lab"
    lab_ca.init(directory)
    return directory


def verify(
    lab: Path, data: bytes, bundle: bytes, *, identity: str = WORKFLOW, issuer: str = GITHUB
) -> None:
    """What a device does: the unmodified sigstore Verifier with the pinned trusted root."""
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(lab / "trusted_root.json")))
    verifier.verify_artifact(
        data, Bundle.from_json(bundle), policy.Identity(identity=identity, issuer=issuer)
    )


@pytest.mark.parametrize(
    ("identity", "issuer"),
    [(WORKFLOW, GITHUB), (EMAIL, EMAIL_ISSUER)],
    ids=["uri identity of a CI workflow", "email identity"],
)
def test_a_lab_bundle_passes_the_unmodified_sigstore_verifier(
    lab: Path, identity: str, issuer: str
) -> None:
    bundle = lab_ca.sign(lab, RELEASE, identity=identity, issuer=issuer)

    verify(lab, RELEASE, bundle, identity=identity, issuer=issuer)
    assert json.loads(bundle)["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"


def test_earlier_bundles_still_verify_after_the_log_has_grown(lab: Path) -> None:
    releases = [b"release %d" % number for number in range(8)]
    bundles = [lab_ca.sign(lab, data, identity=WORKFLOW, issuer=GITHUB) for data in releases]

    for data, bundle in zip(releases, bundles, strict=True):
        verify(lab, data, bundle)
    last_entry = json.loads(bundles[-1])["verificationMaterial"]["tlogEntries"][0]
    assert last_entry["logIndex"] == "7"
    assert len(last_entry["inclusionProof"]["hashes"]) == 3


def test_a_bundle_signed_at_a_past_time_verifies_and_records_that_time(lab: Path) -> None:
    past = datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC)
    bundle = lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB, now=past)

    verify(lab, RELEASE, bundle)
    entry = json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]
    assert entry["integratedTime"] == str(int(past.timestamp()))
    certificate = Bundle.from_json(bundle).signing_certificate
    assert certificate.not_valid_before_utc == past - timedelta(minutes=5)
    assert certificate.not_valid_after_utc == past + timedelta(minutes=5)


def test_verification_fails_for_other_data_bytes(lab: Path) -> None:
    bundle = lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB)

    with pytest.raises(Exception):  # noqa: B017 - devices fail closed on any exception
        verify(lab, RELEASE + b" ", bundle)


def test_verification_fails_for_a_wrong_identity(lab: Path) -> None:
    bundle = lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB)

    with pytest.raises(Exception):  # noqa: B017
        verify(lab, RELEASE, bundle, identity=WORKFLOW.replace("main", "evil"))


def test_verification_fails_for_a_wrong_issuer(lab: Path) -> None:
    bundle = lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB)

    with pytest.raises(Exception):  # noqa: B017
        verify(lab, RELEASE, bundle, issuer="https://accounts.google.com")


def test_verification_fails_for_a_bundle_from_another_lab_ca(lab: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-lab"
    lab_ca.init(other)
    bundle = lab_ca.sign(other, RELEASE, identity=WORKFLOW, issuer=GITHUB)
    verify(other, RELEASE, bundle)  # a valid bundle, only from a CA this device does not trust

    with pytest.raises(Exception):  # noqa: B017
        verify(lab, RELEASE, bundle)


@pytest.mark.parametrize(
    "field", ["integratedTime", "logIndex"], ids=["integrated time", "log index"]
)
def test_verification_fails_for_a_bundle_whose_json_was_edited(lab: Path, field: str) -> None:
    document = json.loads(lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB))
    entry = document["verificationMaterial"]["tlogEntries"][0]
    entry[field] = str(int(entry[field]) + 1)

    with pytest.raises(Exception):  # noqa: B017
        verify(lab, RELEASE, json.dumps(document).encode())


def test_init_refuses_an_existing_lab_ca_and_changes_nothing(lab: Path) -> None:
    before = {path.name: (path.read_bytes(), path.stat()) for path in lab.iterdir()}

    with pytest.raises(lab_ca.LabCAError, match="already holds a lab CA"):
        lab_ca.init(lab)

    after = {path.name: (path.read_bytes(), path.stat()) for path in lab.iterdir()}
    assert after.keys() == before.keys()
    for name, (content, status) in before.items():
        assert after[name][0] == content
        assert after[name][1].st_mtime_ns == status.st_mtime_ns


def test_private_keys_are_readable_by_the_owner_only(lab: Path) -> None:
    keys = sorted(path.name for path in lab.glob("*.key.pem"))

    assert keys == ["ctlog.key.pem", "intermediate.key.pem", "rekor.key.pem", "root.key.pem"]
    for name in keys:
        assert stat.S_IMODE((lab / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(lab.stat().st_mode) == 0o700


def test_the_trusted_root_starts_long_before_any_device_clock(lab: Path) -> None:
    root = json.loads((lab / "trusted_root.json").read_text())

    starts = [root["certificateAuthorities"][0]["validFor"]["start"]]
    starts += [log["publicKey"]["validFor"]["start"] for log in root["tlogs"] + root["ctlogs"]]
    assert starts == ["2020-01-01T00:00:00Z"] * 3


def test_signing_with_a_directory_that_is_not_a_lab_ca_says_so(tmp_path: Path) -> None:
    with pytest.raises(lab_ca.LabCAError, match="is not a lab CA"):
        lab_ca.sign(tmp_path, RELEASE, identity=WORKFLOW, issuer=GITHUB)


def run_sigstore_cli(lab: Path, tmp_path: Path, identity: str) -> subprocess.CompletedProcess[str]:
    artifact = tmp_path / "release.json"
    artifact.write_bytes(RELEASE)
    bundle = tmp_path / "release.json.sigstore.json"
    bundle.write_bytes(lab_ca.sign(lab, RELEASE, identity=WORKFLOW, issuer=GITHUB))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SIGSTORE_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sigstore",
            "--trust-config",
            str(lab / "trust_config.json"),
            "verify",
            "identity",
            "--offline",
            "--bundle",
            str(bundle),
            "--cert-identity",
            identity,
            "--cert-oidc-issuer",
            GITHUB,
            str(artifact),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_the_sigstore_cli_accepts_a_lab_bundle_with_the_lab_trust_config(
    lab: Path, tmp_path: Path
) -> None:
    result = run_sigstore_cli(lab, tmp_path, WORKFLOW)

    assert result.returncode == 0, result.stderr


def test_the_sigstore_cli_rejects_a_lab_bundle_for_a_wrong_identity(
    lab: Path, tmp_path: Path
) -> None:
    result = run_sigstore_cli(lab, tmp_path, WORKFLOW.replace("main", "evil"))

    assert result.returncode == 1, result.stderr


def test_sign_release_with_a_lab_ca_makes_a_bundle_devices_accept(lab: Path) -> None:
    bundle = signing.sign_release(RELEASE, lab_ca=lab, identity=WORKFLOW, issuer=GITHUB)

    verify(lab, RELEASE, bundle)


def test_sign_release_with_a_lab_ca_but_no_identity_asks_for_one(lab: Path) -> None:
    with pytest.raises(signing.SigningError, match="--identity, --issuer"):
        signing.sign_release(RELEASE, lab_ca=lab, identity=None, issuer=GITHUB)


def test_sign_release_outside_ci_explains_how_to_sign_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in CI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)

    with network_attempts() as attempts, pytest.raises(signing.SigningError) as caught:
        signing.sign_release(RELEASE, lab_ca=None, identity=None, issuer=None)

    assert "permissions: id-token: write" in str(caught.value)
    assert "--lab-ca" in str(caught.value)
    assert attempts == []


def test_sign_release_in_github_actions_without_id_token_permission_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in CI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # but no ACTIONS_ID_TOKEN_REQUEST_* variables

    with network_attempts() as attempts, pytest.raises(signing.SigningError) as caught:
        signing.sign_release(RELEASE, lab_ca=None, identity=None, issuer=None)

    assert "permissions: id-token: write" in str(caught.value)
    assert "ACTIONS_ID_TOKEN_REQUEST_TOKEN" in str(caught.value)
    assert attempts == []
