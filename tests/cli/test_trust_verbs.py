"""`lab-ca init`, `release --lab-ca` and `verify`: signing a fleet repo and checking it as a
device would, with the real sigstore Verifier (in its child process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.core import release, trust
from reconciler.errors import VerificationError

ID = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
ISS = "https://token.actions.example.test"
RELEASE = ".fleet/release.json"
BUNDLE = ".fleet/release.json.sigstore.json"


@pytest.fixture
def ca(tmp_path: Path, run_cli) -> Path:
    directory = tmp_path / "lab-ca"
    result = run_cli("lab-ca", "init", str(directory))
    assert result.code == 0, result.err
    assert "trust.trusted_root" in result.out
    return directory


def config(tmp_path: Path, ca: Path, *, identity: str = ID, issuer: str = ISS) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "source:\n  url: /srv/fleet\n"
        f"trust:\n  identities: [{{identity: '{identity}', issuer: '{issuer}'}}]\n"
        f"  trusted_root: {ca / 'trusted_root.json'}\n"
    )
    return path


def signed(fleet, run_cli, ca: Path) -> None:
    fleet.app("gw")
    fleet.commit("gw")
    result = run_cli(
        "release", str(fleet.root), "--lab-ca", str(ca), "--identity", ID, "--issuer", ISS
    )
    assert result.code == 0, result.err
    assert (fleet.root / BUNDLE).is_file()


def test_lab_ca_init_refuses_an_existing_directory(ca: Path, run_cli):
    before = (ca / "trusted_root.json").read_bytes()
    result = run_cli("lab-ca", "init", str(ca))
    assert result.code == 1
    assert "lab-ca init:" in result.err
    assert (ca / "trusted_root.json").read_bytes() == before


def test_a_lab_signed_release_verifies(fleet, run_cli, ca: Path, tmp_path: Path):
    signed(fleet, run_cli, ca)
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 0, result.err
    assert f"signed by {ID}" in result.out
    assert "every pin matches" in result.out


def test_verify_refuses_a_changed_manifest_naming_the_file(
    fleet, run_cli, ca: Path, tmp_path: Path
):
    signed(fleet, run_cli, ca)
    fleet.write("apps/gw/app.yaml", fleet.read("apps/gw/app.yaml") + b"# changed\n")
    fleet.commit("pushed after the release was signed")
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 1
    assert "apps/gw/app.yaml" in result.err and "does not match" in result.err


def test_verify_judges_committed_manifests_and_names_uncommitted_edits(
    fleet, run_cli, ca: Path, tmp_path: Path
):
    signed(fleet, run_cli, ca)
    fleet.write("apps/gw/app.yaml", fleet.read("apps/gw/app.yaml") + b"# not committed\n")
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 0, result.err
    assert "every pin matches the committed files of HEAD" in result.out
    assert "1 pinned file(s) differ between the work tree and HEAD" in result.err
    assert "  apps/gw/app.yaml" in result.err.splitlines()


def test_verify_refuses_a_signer_the_config_does_not_trust(
    fleet, run_cli, ca: Path, tmp_path: Path
):
    signed(fleet, run_cli, ca)
    other = config(tmp_path, ca, identity="someone@example.test")
    result = run_cli("verify", str(fleet.root), "--config", str(other))
    assert result.code == 1
    assert "refused (wrong_identity)" in result.err


def test_verify_refuses_an_edited_release(fleet, run_cli, ca: Path, tmp_path: Path):
    signed(fleet, run_cli, ca)
    data = json.loads(fleet.read(RELEASE))
    data["version"] = 99
    fleet.write(RELEASE, json.dumps(data))
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 1
    assert "refused (invalid_signature)" in result.err


def test_verify_without_a_bundle_is_refused(fleet, run_cli, ca: Path, tmp_path: Path):
    fleet.app("gw")
    fleet.commit("gw")
    assert run_cli("release", str(fleet.root), "--no-sign").code == 0
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 1
    assert "refused (unsigned)" in result.err


def test_release_no_sign_removes_the_bundle_of_the_previous_release(fleet, run_cli, ca: Path):
    signed(fleet, run_cli, ca)
    result = run_cli("release", str(fleet.root), "--no-sign")
    assert result.code == 0
    assert not (fleet.root / BUNDLE).exists()
    assert "removed" in result.err


def test_lab_ca_without_identity_is_a_usage_error(fleet, run_cli, ca: Path):
    fleet.app("gw")
    result = run_cli("release", str(fleet.root), "--lab-ca", str(ca))
    assert result.code == 2
    assert "--identity and --issuer" in result.err
    assert not (fleet.root / RELEASE).exists()


def test_verify_refuses_a_rollback_with_the_reason_a_device_refuses_it(
    fleet, run_cli, ca: Path, tmp_path: Path
):
    signed(fleet, run_cli, ca)
    fleet.commit("release 1")
    old_release, old_bundle = fleet.read(RELEASE), fleet.read(BUNDLE)
    again = run_cli(
        "release", str(fleet.root), "--lab-ca", str(ca), "--identity", ID, "--issuer", ISS
    )
    assert again.code == 0, again.err
    fleet.commit("release 2")
    head_release = fleet.read(RELEASE)
    # Release 1 put back: validly signed, every pin still matching, but older than HEAD's.
    fleet.write(RELEASE, old_release)
    fleet.write(BUNDLE, old_bundle)

    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))

    assert result.code == 1
    assert "refused (rollback)" in result.err
    # The device judges the same bytes with the same object, over the release it applied.
    candidate = trust.ReleaseTrust(old_release, signer=None)
    pinned = candidate.accept_files({p: fleet.read(p) for p in candidate.pinned_paths})
    with pytest.raises(VerificationError) as caught:
        pinned.check_applicable(
            applied_version=json.loads(head_release)["version"],
            applied_digest=release.digest(head_release),
            now=datetime.now(UTC),
        )
    assert caught.value.reason == "rollback"
    assert str(caught.value) in result.err


def test_verify_accepts_the_release_head_already_holds(fleet, run_cli, ca: Path, tmp_path: Path):
    signed(fleet, run_cli, ca)
    fleet.commit("release 1")  # the work tree's release is HEAD's: no succession to judge
    result = run_cli("verify", str(fleet.root), "--config", str(config(tmp_path, ca)))
    assert result.code == 0, result.err
