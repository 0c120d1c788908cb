"""`publish [REPO] OUT` (SPEC 2.4): the committed, signed release as a static tree, verified as
`verify` verifies it (lab CA, the real sigstore Verifier in its child process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.core import published, release

ID = "https://ci.example.test/fleet/.github/workflows/release.yml@refs/heads/main"
ISS = "https://token.actions.example.test"
RELEASE = ".fleet/release.json"
BUNDLE = ".fleet/release.json.sigstore.json"


@pytest.fixture
def ca(tmp_path: Path, run_cli) -> Path:
    directory = tmp_path / "lab-ca"
    assert run_cli("lab-ca", "init", str(directory)).code == 0
    return directory


@pytest.fixture
def config(tmp_path: Path, ca: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "source:\n  url: /srv/fleet\n"
        f"trust:\n  identities: [{{identity: '{ID}', issuer: '{ISS}'}}]\n"
        f"  trusted_root: {ca / 'trusted_root.json'}\n"
    )
    return path


def released(fleet, run_cli, ca: Path | None, *, note: str = "") -> None:
    """Commit an app, release it (signed with `ca`, unsigned with None), commit the release."""
    fleet.app("gw")
    if note:
        fleet.write("apps/gw/app.yaml", fleet.read("apps/gw/app.yaml") + note.encode())
    fleet.commit("gw")
    signing = ["--lab-ca", str(ca), "--identity", ID, "--issuer", ISS] if ca else ["--no-sign"]
    result = run_cli("release", str(fleet.root), *signing)
    assert result.code == 0, result.err
    fleet.commit("release")


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_publish_writes_the_tree_of_the_signed_release(fleet, run_cli, ca, config, tmp_path):
    released(fleet, run_cli, ca)
    out = tmp_path / "public"
    result = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert result.code == 0, result.err
    assert f"signed by {ID}" in result.out and "published release 1" in result.out
    data = (fleet.root / RELEASE).read_bytes()
    manifest = fleet.read("apps/gw/app.yaml")
    assert tree(out) == {
        "latest.json": published.latest_bytes(published.Latest(1, release.digest(data))),
        "releases/1.json": data,
        "releases/1.json.sigstore.json": (fleet.root / BUNDLE).read_bytes(),
        f"blobs/sha256/{release.digest(manifest)}": manifest,
    }


def test_publish_is_idempotent_and_only_adds(fleet, run_cli, ca, config, tmp_path):
    out = tmp_path / "public"
    released(fleet, run_cli, ca)
    assert run_cli("publish", str(fleet.root), str(out), "--config", str(config)).code == 0
    first = tree(out)
    again = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert again.code == 0 and "0 file(s) added" in again.out
    assert tree(out) == first
    released(fleet, run_cli, ca, note="# two\n")
    assert run_cli("publish", str(fleet.root), str(out), "--config", str(config)).code == 0
    second = tree(out)
    assert {k: v for k, v in second.items() if k in first and k != "latest.json"} == {
        k: v for k, v in first.items() if k != "latest.json"
    }
    assert json.loads(second["latest.json"])["version"] == 2
    assert len(second) == len(first) + 3  # release 2, its bundle, the new blob


def test_publish_refuses_an_unsigned_release_unless_allowed(fleet, run_cli, config, tmp_path):
    released(fleet, run_cli, None)
    out = tmp_path / "public"
    refused = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert refused.code == 1 and "not signed" in refused.err
    assert not out.exists()
    allowed = run_cli("publish", str(fleet.root), str(out), "--allow-unsigned")
    assert allowed.code == 0, allowed.err
    assert "--allow-unsigned" in allowed.err
    assert set(tree(out)) >= {"latest.json", "releases/1.json"}
    assert "releases/1.json.sigstore.json" not in tree(out)


def test_publish_refuses_a_pin_the_committed_manifest_does_not_match(
    fleet, run_cli, ca, config, tmp_path
):
    released(fleet, run_cli, ca)
    fleet.write("apps/gw/app.yaml", fleet.read("apps/gw/app.yaml") + b"# after the release\n")
    fleet.commit("pushed after the release was signed")
    out = tmp_path / "public"
    result = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert result.code == 1
    assert "pin_mismatch" in result.err and "apps/gw/app.yaml" in result.err
    assert not out.exists()


def test_publish_refuses_an_uncommitted_release(fleet, run_cli, ca, config, tmp_path):
    fleet.app("gw")
    fleet.commit("gw")
    signing = ["--lab-ca", str(ca), "--identity", ID, "--issuer", ISS]
    assert run_cli("release", str(fleet.root), *signing).code == 0
    result = run_cli("publish", str(fleet.root), str(tmp_path / "o"), "--config", str(config))
    assert result.code == 1 and "not committed" in result.err


def test_publish_refuses_to_move_latest_back_to_an_older_release(
    fleet, run_cli, ca, config, tmp_path
):
    out = tmp_path / "public"
    released(fleet, run_cli, ca)
    first_release = fleet.git("rev-parse", "HEAD").strip()
    released(fleet, run_cli, ca, note="# two\n")
    assert run_cli("publish", str(fleet.root), str(out), "--config", str(config)).code == 0
    latest = (out / "latest.json").read_bytes()
    fleet.git("checkout", "-q", first_release)
    result = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert result.code == 1 and "refusing a rollback" in result.err
    assert (out / "latest.json").read_bytes() == latest


def test_publish_refuses_an_out_dir_whose_latest_json_is_not_a_trees(
    fleet, run_cli, ca, config, tmp_path
):
    released(fleet, run_cli, ca)
    out = tmp_path / "public"
    out.mkdir()
    (out / "latest.json").write_text("<html>someone else's site</html>")
    result = run_cli("publish", str(fleet.root), str(out), "--config", str(config))
    assert result.code == 1 and "is not JSON" in result.err
    assert (out / "latest.json").read_text() == "<html>someone else's site</html>"


def test_publish_takes_out_alone_with_the_checkout_as_the_current_directory(
    fleet, run_cli, ca, config, tmp_path, monkeypatch
):
    released(fleet, run_cli, ca)
    monkeypatch.chdir(fleet.root)
    out = tmp_path / "public"
    assert run_cli("publish", str(out), "--config", str(config)).code == 0
    assert (out / "latest.json").is_file()
