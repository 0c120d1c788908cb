"""The trusted-release object and the device's intake over it: the signed-release attacks of
tests/integration/test_signed_releases.py, repeated in milliseconds.

The signature itself is judged by sigstore in tests/unit/test_verification.py and end to end in
the integration tests; here the verifier is a stand-in that accepts exactly the bytes it was
told were signed (a real signature cannot be made without the lab CA's slow setup, and what is
under test is what the device does with the verifier's verdict).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.core import release, trust
from reconciler.device import intake
from reconciler.errors import Reason, ReleaseError, RevisionRejected, VerificationError
from reconciler.ports import Signer

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
GW = "apps/gw/app.yaml"
KIOSK = "apps/kiosk/app.yaml"


def app(name: str) -> bytes:
    return (
        "apiVersion: reconciler/v1\nkind: App\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  selector: {}\n"
        '  containers:\n    - {name: main, image: "127.0.0.1:5000/app:1.0"}\n'
    ).encode()


GW_V1 = app("gw")
KIOSK_V1 = app("kiosk")
SIGNER = Signer("https://ci.example.test/release.yml@refs/heads/main", "https://issuer.test")
COMMIT = "c" * 40


def released(files: dict[str, bytes], *, previous: release.Release | None = None, **kw) -> bytes:
    built = release.build(files, previous=previous, now=NOW, source_commit=COMMIT, **kw)
    return release.serialize(built)


def accepted(data: bytes, files: dict[str, bytes]) -> trust.TrustedRelease:
    return trust.ReleaseTrust(data, signer=SIGNER).accept_files(files)


# --- the trusted-release object ----------------------------------------------------------------


def test_a_release_whose_pins_hold_is_trusted_with_exactly_its_pinned_bytes():
    files = {GW: GW_V1, KIOSK: KIOSK_V1}
    trusted = accepted(released(files), {**files, "apps/unlisted/app.yaml": b"ignored"})
    assert trusted.files == files
    assert trusted.signer == SIGNER
    assert trusted.digest == release.digest(released(files))


def test_a_manifest_changed_after_signing_is_refused_as_a_pin_mismatch_naming_it():
    data = released({GW: GW_V1})
    with pytest.raises(ReleaseError) as caught:
        accepted(data, {GW: GW_V1 + b"# edited after the release was signed\n"})
    assert caught.value.reason is Reason.PIN_MISMATCH
    (problem,) = caught.value.problems
    assert problem.file == GW and "does not match" in problem.message


def test_a_pinned_manifest_missing_at_the_commit_is_refused():
    with pytest.raises(ReleaseError) as caught:
        accepted(released({GW: GW_V1, KIOSK: KIOSK_V1}), {GW: GW_V1})
    assert caught.value.reason is Reason.PIN_MISMATCH
    assert [p.file for p in caught.value.problems] == [KIOSK]


def test_a_pinned_file_over_the_cap_is_refused_by_size_whatever_its_hash():
    huge = b"#" * (trust.MAX_PINNED_FILE_BYTES + 1)
    data = released({GW: huge})
    with pytest.raises(ReleaseError) as caught:
        accepted(data, {GW: huge})
    (problem,) = caught.value.problems
    assert "over the limit" in problem.message


def test_release_bytes_that_are_not_a_release_are_refused_as_malformed():
    with pytest.raises(ReleaseError) as caught:
        trust.ReleaseTrust(b'{"schema": "something else"}', signer=SIGNER)
    assert caught.value.reason is Reason.MALFORMED


def test_an_older_version_is_refused_as_a_rollback():
    first = released({GW: GW_V1})
    second = released({GW: GW_V1}, previous=release.parse(first))
    with pytest.raises(VerificationError) as caught:
        accepted(first, {GW: GW_V1}).check_applicable(
            applied_version=2, applied_digest=release.digest(second), now=NOW
        )
    assert caught.value.reason is Reason.ROLLBACK


def test_the_applied_version_with_other_bytes_is_refused_as_equivocation():
    honest = released({GW: GW_V1})
    other = released({GW: GW_V1, KIOSK: KIOSK_V1})  # also version 1
    with pytest.raises(VerificationError) as caught:
        accepted(other, {GW: GW_V1, KIOSK: KIOSK_V1}).check_applicable(
            applied_version=1, applied_digest=release.digest(honest), now=NOW
        )
    assert caught.value.reason is Reason.EQUIVOCATION


def test_the_applied_release_again_and_a_newer_one_are_applicable():
    first = released({GW: GW_V1})
    second = released({GW: GW_V1}, previous=release.parse(first))
    applied = {"applied_version": 1, "applied_digest": release.digest(first), "now": NOW}
    accepted(first, {GW: GW_V1}).check_applicable(**applied)
    accepted(second, {GW: GW_V1}).check_applicable(**applied)


def test_an_expired_release_is_refused_from_its_expiry_on():
    trusted = accepted(released({GW: GW_V1}, expires_in=86400), {GW: GW_V1})
    trusted.check_applicable(
        applied_version=None, applied_digest=None, now=NOW + timedelta(hours=23)
    )
    with pytest.raises(VerificationError) as caught:
        trusted.check_applicable(
            applied_version=None, applied_digest=None, now=NOW + timedelta(days=1)
        )
    assert caught.value.reason is Reason.EXPIRED
    assert trusted.expired(NOW + timedelta(days=1))


# --- the device's intake: fetch, verdict, trust -------------------------------------------------


class CommitFiles:
    """A fleet source of one commit's files, counting reads (a stand-in for GitSource)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[str] = []

    def read(self, commit: str, path: str, *, max_bytes: int) -> bytes | None:
        self.reads.append(path)
        data = self.files.get(path)
        if data is not None and len(data) > max_bytes:
            raise ReleaseError([])
        return data


class SignedBytes:
    """Accepts a bundle only when it is b"signed:" + the exact release bytes."""

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> Signer:
        self.calls += 1
        if bundle is None:
            raise VerificationError(f"{file}: unsigned", reason="unsigned")
        if bundle != b"signed:" + artifact:
            raise VerificationError(f"{file}: bad signature", reason="invalid_signature")
        return SIGNER


def repo(files: dict[str, bytes], *, signed: bytes | None = None) -> CommitFiles:
    data = released(files)
    fleet = {release.RELEASE_PATH: data, **files}
    if signed is not None:
        fleet[release.BUNDLE_PATH] = b"signed:" + signed
    return CommitFiles(fleet)


def test_the_intake_trusts_a_signed_release_and_parses_its_manifests():
    files = {GW: GW_V1, KIOSK: KIOSK_V1}
    source = repo(files, signed=released(files))
    trusted, content = intake.Intake(source, SignedBytes(), allow_unsigned=False).read(COMMIT)
    assert trusted.signer == SIGNER
    assert sorted(m.name for m in content.manifests.values()) == ["gw", "kiosk"]
    assert content.pins == {GW, KIOSK}


@pytest.mark.parametrize(
    ("bundle_of", "reason"),
    [(None, "unsigned"), (b"another release", "invalid_signature")],
)
def test_the_intake_reads_nothing_of_a_release_the_verifier_refuses(bundle_of, reason):
    source = repo({GW: GW_V1}, signed=bundle_of)
    with pytest.raises(VerificationError) as caught:
        intake.Intake(source, SignedBytes(), allow_unsigned=False).read(COMMIT)
    assert caught.value.reason == reason
    assert GW not in source.reads  # not even its pins were fetched


def test_the_intake_refuses_a_tampered_manifest_of_a_signed_release():
    files = {GW: GW_V1}
    source = repo(files, signed=released(files))
    source.files[GW] = GW_V1 + b"# tampered\n"
    with pytest.raises(RevisionRejected) as caught:
        intake.Intake(source, SignedBytes(), allow_unsigned=False).read(COMMIT)
    assert isinstance(caught.value, ReleaseError)
    assert caught.value.reason is Reason.PIN_MISMATCH


def test_an_unchanged_head_is_read_and_verified_once():
    files = {GW: GW_V1}
    source, verifier = repo(files, signed=released(files)), SignedBytes()
    reader = intake.Intake(source, verifier, allow_unsigned=False)
    first = reader.read(COMMIT)
    reads = len(source.reads)
    assert reader.read(COMMIT) == first
    assert len(source.reads) == reads and verifier.calls == 1


def test_with_allow_unsigned_no_bundle_is_asked_for():
    source = repo({GW: GW_V1})
    trusted, _ = intake.Intake(source, SignedBytes(), allow_unsigned=True).read(COMMIT)
    assert trusted.signer is None
    assert release.BUNDLE_PATH not in source.reads
