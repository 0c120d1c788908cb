"""A release refused for its bundle is read afresh once a host serves the right one.

A static tree's `latest.json` pins the release file by its sha256 but not its bundle, so a
lying mirror (a tampered USB stick) can serve the right release with a bundle signed by someone
else. The device must not keep that bundle for good: told of the refusal (`Intake` calls
`forget`), the static source fetches the bundle again, writing it only when it differs, so a
steady attack costs reads, never writes to state_dir. Real StaticSource over a directory; the
verifier is a fake that trusts one bundle's bytes (the signature check is not what is tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler import errors, ports
from reconciler.adapters.static_source import StaticSource
from reconciler.core import published, release
from reconciler.device.intake import Intake
from tests.fakes import CI_SIGNER, app_manifest
from tests.unit.test_published import files_in

MANIFEST = app_manifest("web", [{"name": "web", "image": "registry.example/web:v1"}])


def write_tree(out: Path) -> str:
    """Release 1 pinning MANIFEST, published into `out` as `publish` does; its sha256."""
    files = {"apps/web/app.yaml": MANIFEST}
    built = release.build(
        files, previous=None, now=datetime.now(UTC), source_commit="0" * 40, expires_in=86400
    )
    data = release.serialize(built)
    blob = out / published.blob_path(release.digest(MANIFEST))
    blob.parent.mkdir(parents=True)
    blob.write_bytes(MANIFEST)
    (out / "releases").mkdir()
    (out / published.release_path(1)).write_bytes(data)
    latest = published.Latest(version=1, sha256=release.digest(data))
    (out / published.LATEST).write_bytes(published.latest_bytes(latest))
    return latest.sha256


@dataclass
class BundleVerifier:
    """Accepts exactly the bundle `good`."""

    good: bytes

    def verify(self, artifact: bytes, bundle: bytes | None, *, file: str) -> ports.Signer:
        if bundle != self.good:
            raise errors.VerificationError(f"{file}: signed by a stranger", reason="wrong_identity")
        return CI_SIGNER


def test_a_bundle_refused_once_is_fetched_again_and_the_right_one_is_accepted(tmp_path: Path):
    stick, cache = tmp_path / "usb", tmp_path / "state" / "static"
    sha = write_tree(stick)
    bundle_file = stick / published.bundle_path(1)
    bundle_file.write_bytes(b"bundle by a stranger")
    source = StaticSource(cache_dir=cache, urls=[str(stick)])
    intake = Intake(source, BundleVerifier(b"the fleet's bundle"), allow_unsigned=False)

    def cycle() -> None:
        head = source.head()
        source.ensure(head.commit, head.remote)
        intake.read(head.commit)

    with pytest.raises(errors.VerificationError, match="stranger"):
        cycle()
    written = files_in(cache)
    with pytest.raises(errors.VerificationError, match="stranger"):
        cycle()  # a steady attack: refused again, nothing written again
    assert files_in(cache) == written

    bundle_file.write_bytes(b"the fleet's bundle")  # the host is fixed: same release, same name
    cycle()
    assert source.read(sha, release.BUNDLE_PATH, max_bytes=1000) == b"the fleet's bundle"
    assert intake.read(sha)[1].manifests["apps/web/app.yaml"].name == "web"


def test_a_release_never_refused_is_not_fetched_again(tmp_path: Path):
    stick, cache = tmp_path / "usb", tmp_path / "state" / "static"
    sha = write_tree(stick)
    (stick / published.bundle_path(1)).write_bytes(b"the fleet's bundle")
    source = StaticSource(cache_dir=cache, urls=[str(stick)])
    source.ensure(source.head().commit, str(stick))
    (stick / published.bundle_path(1)).write_bytes(b"swapped later")
    source.ensure(source.head().commit, str(stick))
    assert source.read(sha, release.BUNDLE_PATH, max_bytes=1000) == b"the fleet's bundle"
