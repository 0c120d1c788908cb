"""The published tree (SPEC 2.4): its names, `latest.json`, and the static source reading a tree
from a local directory (a USB stick), cache and mirror order included. HTTP is in
tests/integration/test_static_source.py against nginx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters.static_source import StaticSource
from reconciler.core import published, release
from reconciler.errors import RemotesFailed

MANIFEST = b"apiVersion: reconciler/v1\nkind: App\nmetadata: {name: web}\n"


def test_latest_json_round_trips_and_is_stable():
    latest = published.Latest(version=43, sha256="a" * 64)
    data = published.latest_bytes(latest)
    assert data == b'{"version": 43, "sha256": "' + b"a" * 64 + b'"}\n'
    assert published.parse_latest(data) == latest


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"version": 0, "sha256": "' + b"a" * 64 + b'"}', "version must be a positive"),
        (b'{"version": true, "sha256": "' + b"a" * 64 + b'"}', "version must be a positive"),
        (b'{"version": 1, "sha256": "ABC"}', "sha256 must be 64"),
        (b'{"version": 1}', "sha256 must be 64"),
        (b" " * (published.MAX_LATEST_BYTES + 1), "over the limit"),
    ],
)
def test_a_bad_latest_json_is_refused_naming_why(data: bytes, why: str):
    with pytest.raises(errors.ProblemsError) as info:
        published.parse_latest(data)
    assert why in str(info.value.problems[0])


def test_names_in_the_tree():
    assert published.release_path(7) == "releases/7.json"
    assert published.bundle_path(7) == "releases/7.json.sigstore.json"
    assert published.blob_path("b" * 64) == "blobs/sha256/" + "b" * 64
    with pytest.raises(ValueError):
        published.blob_path("../../etc/passwd")


def test_pinned_blobs_of_an_unverified_release_skip_what_is_not_a_pin():
    doc = {"apps": {"apps/a.yaml": {"sha256": "c" * 64}, "apps/b.yaml": {"sha256": "../x"}}}
    assert published.pinned_blobs(json.dumps(doc).encode()) == {"apps/a.yaml": "c" * 64}
    assert published.pinned_blobs(b"\xff") == {}
    assert published.pinned_blobs(b'{"apps": []}') == {}


# --- the static source over a local directory --------------------------------------------------


def write_tree(out: Path, version: int, files: dict[str, bytes]) -> str:
    """A tree as `publish` writes it (unsigned), for `version` pinning `files`; its sha256."""
    apps = {path: {"sha256": release.digest(data)} for path, data in files.items()}
    data = json.dumps({"version": version, "apps": apps}).encode()
    for blob in files.values():
        (out / published.blob_path(release.digest(blob))).parent.mkdir(parents=True, exist_ok=True)
        (out / published.blob_path(release.digest(blob))).write_bytes(blob)
    (out / "releases").mkdir(parents=True, exist_ok=True)
    (out / published.release_path(version)).write_bytes(data)
    latest = published.Latest(version=version, sha256=release.digest(data))
    (out / published.LATEST).write_bytes(published.latest_bytes(latest))
    return latest.sha256


def files_in(directory: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")}


def test_a_tree_in_a_directory_is_read_and_cached_and_an_unchanged_poll_writes_nothing(
    tmp_path: Path,
):
    tree, cache = tmp_path / "usb", tmp_path / "state" / "static"
    sha = write_tree(tree, 1, {"apps/web/app.yaml": MANIFEST})
    source = StaticSource(cache_dir=cache, urls=[f"file://{tree}"])
    head = source.head()
    assert (head.commit, head.remote) == (sha, f"file://{tree}")
    source.ensure(head.commit, head.remote)
    assert source.read(sha, release.RELEASE_PATH, max_bytes=release.MAX_BYTES) is not None
    assert source.read(sha, release.BUNDLE_PATH, max_bytes=1000) is None  # unsigned tree
    assert source.read(sha, "apps/web/app.yaml", max_bytes=1 << 20) == MANIFEST
    assert source.read(sha, "apps/other/app.yaml", max_bytes=1 << 20) is None
    before = files_in(cache)
    for _ in range(3):
        again = StaticSource(cache_dir=cache, urls=[str(tree)])  # a new process: `once`
        assert again.head().commit == sha
        again.ensure(sha, str(tree))
        assert again.read(sha, "apps/web/app.yaml", max_bytes=1 << 20) == MANIFEST
        assert source.head().commit == sha
    assert files_in(cache) == before


def test_a_corrupted_blob_is_returned_for_the_caller_to_refuse_and_never_kept(tmp_path: Path):
    tree, cache = tmp_path / "usb", tmp_path / "cache"
    sha = write_tree(tree, 1, {"apps/web/app.yaml": MANIFEST})
    (tree / published.blob_path(release.digest(MANIFEST))).write_bytes(b"evil")
    source = StaticSource(cache_dir=cache, urls=[str(tree)])
    source.ensure(source.head().commit, str(tree))
    assert source.read(sha, "apps/web/app.yaml", max_bytes=1 << 20) == b"evil"
    assert not (cache / "blobs").exists()
    (tree / published.blob_path(release.digest(MANIFEST))).write_bytes(MANIFEST)  # fixed
    assert source.read(sha, "apps/web/app.yaml", max_bytes=1 << 20) == MANIFEST


def test_a_latest_json_naming_a_release_no_mirror_holds_is_a_fetch_error(tmp_path: Path):
    tree = tmp_path / "usb"
    write_tree(tree, 1, {"apps/web/app.yaml": MANIFEST})
    latest = published.Latest(version=1, sha256="d" * 64)
    (tree / published.LATEST).write_bytes(published.latest_bytes(latest))
    source = StaticSource(cache_dir=tmp_path / "cache", urls=[str(tree)])
    head = source.head()
    with pytest.raises(RemotesFailed) as info:
        source.ensure(head.commit, head.remote)
    assert "is not the dddddddddddd latest.json names" in str(info.value)


def test_mirrors_fail_over_and_the_one_that_answered_is_asked_first(tmp_path: Path):
    good, missing = tmp_path / "good", tmp_path / "missing"
    sha = write_tree(good, 1, {"apps/web/app.yaml": MANIFEST})
    source = StaticSource(cache_dir=tmp_path / "cache", urls=[str(missing), str(good)])
    head = source.head()
    assert head.commit == sha and head.remote == str(good)
    assert [name for name, _ in head.failures] == [str(missing)]
    assert source.head().failures == ()  # the good one first now
    good.rename(tmp_path / "gone")
    with pytest.raises(RemotesFailed) as info:
        source.head()
    assert [name for name, _ in info.value.failures] == [str(good), str(missing)]


def test_old_releases_and_their_blobs_are_pruned_from_the_cache(tmp_path: Path):
    tree, cache = tmp_path / "usb", tmp_path / "cache"
    source = StaticSource(cache_dir=cache, urls=[str(tree)])
    for version in range(1, 6):
        blob = MANIFEST + f"# {version}\n".encode()
        sha = write_tree(tree, version, {"apps/web/app.yaml": blob})
        source.ensure(source.head().commit, str(tree))
        assert source.read(sha, "apps/web/app.yaml", max_bytes=1 << 20) == blob
    assert len(list((cache / "releases").glob("*.json"))) == 3
    assert len(list((cache / "blobs" / "sha256").iterdir())) == 3


def test_a_commit_that_is_not_a_sha256_is_a_value_error(tmp_path: Path):
    source = StaticSource(cache_dir=tmp_path / "cache", urls=[str(tmp_path)])
    with pytest.raises(ValueError):
        source.read("HEAD", release.RELEASE_PATH, max_bytes=10)
