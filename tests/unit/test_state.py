"""Device state: JSON round-trip, atomic saves, kept manifests and the single-instance lock."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core import state
from reconciler.core.state import (
    AppliedApp,
    DeviceState,
    HeldBack,
    StateError,
    Transaction,
)
from reconciler.device import state_store
from reconciler.device.state_store import StateLocked, StateStore
from reconciler.errors import ReconcilerError

MANIFEST = b"apiVersion: reconciler/v1\nkind: App\nmetadata:\n  name: gw\n"
REVISION = hashlib.sha256(MANIFEST).hexdigest()

texts = st.text(max_size=20)
versions = st.integers(min_value=-(2**70), max_value=2**70)
apps = st.builds(
    AppliedApp,
    name=texts,
    path=texts,
    revision=texts,
    images=st.lists(st.tuples(texts, texts), max_size=3).map(tuple),
)
app_tuples = st.lists(apps, max_size=3).map(tuple)
states = st.builds(
    DeviceState,
    release_version=st.none() | versions,
    release_digest=st.none() | texts,
    commit=st.none() | texts,
    applied_at=st.none() | texts,
    apps=app_tuples,
    previous_apps=app_tuples,
    held_back=st.lists(
        st.builds(
            HeldBack, app=texts, revision=texts, reason=texts, release_version=versions, at=texts
        ),
        max_size=3,
    ).map(tuple),
    app_previous=app_tuples,
    waiting=st.lists(
        st.builds(
            state.Waiting,
            app=texts,
            revision=texts,
            kind=st.sampled_from(state.WAITING_KINDS),
            reason=texts,
        ),
        max_size=3,
    ).map(tuple),
    pending=st.none()
    | st.builds(
        Transaction,
        from_apps=app_tuples,
        to_apps=app_tuples,
        release_version=versions,
        commit=texts,
        started_at=texts,
    ),
    last_fetch=st.none() | texts,
    last_fetch_commit=st.none() | texts,
    last_error=st.none() | texts,
    last_verification_failure=st.none() | texts,
)


def a_state() -> DeviceState:
    gw = AppliedApp("gw", "apps/gw/app.yaml", REVISION, (("web", "nginx@sha256:" + "a" * 64),))
    return DeviceState(
        release_version=7,
        release_digest="b" * 64,
        commit="c" * 40,
        applied_at="2024-05-01T12:00:00Z",
        apps=(gw,),
        held_back=(HeldBack("db", "d" * 64, "unhealthy", 7, "2024-05-01T12:01:00Z"),),
    )


# --- JSON ----------------------------------------------------------------------------------


@given(states)
def test_any_state_survives_a_json_round_trip(device: DeviceState) -> None:
    assert state.from_json(state.to_json(device)) == device


def test_a_fresh_state_round_trips_and_is_readable_json() -> None:
    data = state.to_json(DeviceState())
    assert json.loads(data)["schema_version"] == 2
    assert state.from_json(data) == DeviceState()


def test_unknown_schema_version_is_an_error_naming_the_file() -> None:
    data = json.dumps({"schema_version": 3, "apps": []}).encode()
    with pytest.raises(StateError) as caught:
        state.from_json(data, file="/var/lib/reconciler/state.json")
    assert isinstance(caught.value, ReconcilerError)
    assert str(caught.value).startswith("/var/lib/reconciler/state.json: schema_version: ")
    assert "unknown schema version 3; this build reads 1 and 2" in str(caught.value)


def test_a_schema_1_state_file_reads_with_no_per_app_history_and_is_written_as_2() -> None:
    old = {
        "schema_version": 1,
        "release_version": 3,
        "apps": [{"name": "gw", "path": "apps/gw/app.yaml", "revision": REVISION, "images": []}],
        "previous_apps": [],
        "held_back": [],
        "pending": None,
    }
    loaded = state.from_json(json.dumps(old).encode())
    assert loaded.release_version == 3
    assert loaded.app_previous == () and loaded.waiting == ()
    assert json.loads(state.to_json(loaded))["schema_version"] == 2
    # A schema 1 file never had the new keys: one that does is not schema 1.
    with pytest.raises(StateError, match="waiting: unknown key"):
        state.from_json(json.dumps({**old, "waiting": []}).encode())


def test_a_schema_1_file_implies_each_changed_apps_previous_revision() -> None:
    def app(name: str, rev: str) -> dict[str, object]:
        return {"name": name, "path": f"apps/{name}/app.yaml", "revision": rev, "images": []}

    old = {
        "schema_version": 1,
        "apps": [app("gw", "b" * 64), app("db", "c" * 64), app("new", "e" * 64)],
        "previous_apps": [app("gw", "a" * 64), app("db", "c" * 64), app("gone", "d" * 64)],
    }
    loaded = state.from_json(json.dumps(old).encode())
    assert [(a.name, a.revision) for a in loaded.app_previous] == [("gw", "a" * 64)]


def test_a_pending_revision_of_an_unknown_kind_is_refused() -> None:
    doc = json.loads(state.to_json(DeviceState()))
    doc["waiting"] = [{"app": "gw", "revision": REVISION, "kind": "later", "reason": "?"}]
    with pytest.raises(StateError, match=r"waiting\[0\]\.kind: expected one of wave"):
        state.from_json(json.dumps(doc).encode())


def test_a_boolean_is_not_schema_version_one() -> None:
    with pytest.raises(StateError, match="schema_version"):
        state.from_json(b'{"schema_version": true}')


def test_invalid_json_is_a_state_error_naming_the_file() -> None:
    with pytest.raises(StateError, match=r"^s\.json: not valid JSON"):
        state.from_json(b'{"schema_version": 1,', file="s.json")


def test_a_json_array_is_a_state_error() -> None:
    with pytest.raises(StateError, match="expected an object, got a list"):
        state.from_json(b"[]")


def test_every_problem_of_a_malformed_state_is_reported() -> None:
    doc = json.loads(state.to_json(a_state()))
    doc["release_version"] = "7"
    doc["apps"][0]["images"] = [["web"]]
    doc["held_back"][0]["release_version"] = None
    doc["surprise"] = 1
    with pytest.raises(StateError) as caught:
        state.from_json(json.dumps(doc).encode(), file="state.json")
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "surprise",
        "release_version",
        "apps[0].images[0]",
        "held_back[0].release_version",
    ]
    assert all(p.file == "state.json" for p in caught.value.problems)


def test_missing_keys_take_their_defaults() -> None:
    assert state.from_json(b'{"schema_version": 1, "commit": "abc"}') == DeviceState(commit="abc")


# --- the store -----------------------------------------------------------------------------


def test_loading_a_state_dir_that_does_not_exist_gives_an_empty_state_and_creates_nothing(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load() == DeviceState()
    assert not (tmp_path / "state").exists()


def test_saved_state_loads_back_equal(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(a_state())
    assert store.load() == a_state()
    assert StateStore(tmp_path / "state").load() == a_state()


def test_first_save_creates_the_state_dir_private(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "var" / "state")
    store.save(DeviceState())
    assert stat.S_IMODE((tmp_path / "var" / "state").stat().st_mode) == 0o700


def test_save_leaves_only_the_state_file_behind(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(a_state())
    store.save(replace(a_state(), last_error="boom"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert store.load().last_error == "boom"


def test_a_failed_save_keeps_the_old_state_and_removes_its_temp_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "state.json").mkdir()  # rename over a directory fails after the temp is written
    with pytest.raises(OSError):
        store.save(a_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_corrupt_state_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b"\x00garbage")
    with pytest.raises(StateError) as caught:
        StateStore(tmp_path).load()
    assert str(tmp_path / "state.json") in str(caught.value)


def test_a_kept_manifest_comes_back_byte_for_byte(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.put_manifest(REVISION, MANIFEST)
    assert store.get_manifest(REVISION) == MANIFEST
    assert (tmp_path / "state" / "manifests" / f"{REVISION}.yaml").read_bytes() == MANIFEST
    store.put_manifest(REVISION, MANIFEST)  # storing it again is harmless
    assert store.manifests() == {REVISION}


def test_a_manifest_is_refused_under_a_revision_it_does_not_hash_to(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(StateError, match="not the revision"):
        store.put_manifest("0" * 64, MANIFEST)
    assert store.manifests() == set()


def test_a_missing_manifest_is_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path).get_manifest(REVISION) is None


def test_a_corrupted_manifest_is_none_and_the_next_put_repairs_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.put_manifest(REVISION, MANIFEST)
    (tmp_path / "manifests" / f"{REVISION}.yaml").write_bytes(MANIFEST + b"# flipped\n")
    assert store.get_manifest(REVISION) is None
    store.put_manifest(REVISION, MANIFEST)
    assert store.get_manifest(REVISION) == MANIFEST


def test_a_revision_that_is_not_a_sha256_never_becomes_a_path(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.get_manifest("../state") is None
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.put_manifest("../../etc/passwd", b"x")


def test_a_failed_manifest_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "manifests" / f"{REVISION}.yaml").mkdir(parents=True)
    with pytest.raises(OSError):
        store.put_manifest(REVISION, MANIFEST)
    assert [p.name for p in (tmp_path / "manifests").iterdir()] == [f"{REVISION}.yaml"]


def test_pruning_keeps_only_the_named_revisions(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    blobs = [MANIFEST + f"# {i}\n".encode() for i in range(3)]
    revisions = [hashlib.sha256(b).hexdigest() for b in blobs]
    for revision, blob in zip(revisions, blobs, strict=True):
        store.put_manifest(revision, blob)
    store.prune_manifests({revisions[0], revisions[2], "not-kept-anyway"})
    assert store.manifests() == {revisions[0], revisions[2]}
    assert store.get_manifest(revisions[1]) is None


def test_pruning_an_empty_state_dir_does_nothing(tmp_path: Path) -> None:
    StateStore(tmp_path / "none").prune_manifests(set())
    assert not (tmp_path / "none").exists()


# --- the lock ------------------------------------------------------------------------------


def test_a_second_holder_of_the_lock_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.lock():
        with pytest.raises(StateLocked) as caught:
            store.lock()
        assert caught.value.pid == os.getpid()
        assert str(tmp_path / "lock") in str(caught.value)
    store.lock().release()


def test_another_process_holding_the_lock_is_named_by_its_pid(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from reconciler.device.state_store import StateStore
        with StateStore(sys.argv[1]).lock():
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(StateLocked, match=f"held by process {holder.pid}"):
            StateStore(tmp_path).lock()
    finally:
        holder.communicate("", timeout=30)
    with StateStore(tmp_path).lock():  # the holder exited: the lock is free again
        pass


def test_taking_the_lock_removes_temp_files_a_crash_left_behind(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.put_manifest(REVISION, MANIFEST)
    (tmp_path / ".tmp-abc123").write_bytes(b"half a state")
    (tmp_path / "manifests" / ".tmp-def456").write_bytes(b"half a manifest")
    with store.lock():
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "manifests"]
        assert store.manifests() == {REVISION}


def test_taking_the_lock_again_writes_nothing_in_state_dir(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.lock().release()
    lock = tmp_path / "lock"
    before = (lock.stat().st_mtime_ns, lock.stat().st_ino, lock.read_bytes())
    directory = tmp_path.stat().st_mtime_ns
    with store.lock():
        pass
    assert (lock.stat().st_mtime_ns, lock.stat().st_ino, lock.read_bytes()) == before
    assert tmp_path.stat().st_mtime_ns == directory


def test_a_failed_save_names_the_file_it_could_not_write(tmp_path: Path) -> None:
    (tmp_path / "state.json" / "in-the-way").mkdir(parents=True)  # the rename cannot land
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'state.json'}: "):
        StateStore(tmp_path).save(DeviceState())
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_a_writable_state_dir_has_no_write_problem_and_a_missing_one_none_yet(
    tmp_path: Path,
) -> None:
    assert state_store.write_problem(tmp_path) is None
    assert state_store.write_problem(tmp_path / "not-yet") is None
