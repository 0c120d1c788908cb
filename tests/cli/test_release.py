"""`reconciler release [REPO] --no-sign` (SPEC 2.2, 3.3): writes `.fleet/release.json`."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

from reconciler.core import release
from reconciler.fleet import release_verb
from testkit.cli import run_console_script
from testkit.fleet_repos import FleetRepo

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
RELEASE = ".fleet/release.json"


def write(fleet: FleetRepo, now: datetime, **kwargs: object) -> tuple[int, bytes | None, str]:
    out = io.StringIO()
    code, data = release_verb.write_release(
        fleet.root, now=now, expires_in=kwargs.pop("expires_in", 30 * 86400.0), out=out, **kwargs
    )
    return code, data, out.getvalue()


def doc(fleet: FleetRepo) -> dict:
    return json.loads(fleet.read(RELEASE))


def sha(fleet: FleetRepo, rel: str) -> str:
    return hashlib.sha256(fleet.read(rel)).hexdigest()


def two_apps(fleet: FleetRepo) -> FleetRepo:
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    fleet.app("kiosk", image="127.0.0.1:5000/kiosk:1.0")
    fleet.commit("apps")
    return fleet


def test_release_pins_every_manifest_and_names_head_as_source_commit(fleet):
    two_apps(fleet)
    code, data, out = write(fleet, T0)
    assert code == 0
    assert data == fleet.read(RELEASE)
    assert doc(fleet) == {
        "schema": "reconciler/release/v1",
        "version": 1,
        "created": "2026-03-01T12:00:00Z",
        "expires": "2026-03-31T12:00:00Z",
        "source_commit": fleet.head(),
        "apps": {
            "apps/gw/app.yaml": {
                "sha256": sha(fleet, "apps/gw/app.yaml"),
                "since": "2026-03-01T12:00:00Z",
            },
            "apps/kiosk/app.yaml": {
                "sha256": sha(fleet, "apps/kiosk/app.yaml"),
                "since": "2026-03-01T12:00:00Z",
            },
        },
    }
    assert out == (
        f"release 1: 2 app(s), commit {fleet.head()[:12]}, expires 2026-03-31T12:00:00Z, "
        "written to .fleet/release.json\n"
    )


def test_the_same_repo_and_clock_give_the_same_bytes(tmp_path):
    first, second = FleetRepo(tmp_path / "one"), FleetRepo(tmp_path / "two")
    results = [write(two_apps(repo), T0)[1] for repo in (first, second)]
    assert first.head() == second.head()  # fixed author and dates: the same commit
    assert results[0] is not None
    assert results[0] == results[1] == first.read(RELEASE) == second.read(RELEASE)
    assert results[0] == release.serialize(release.parse(results[0]))


def test_each_release_increments_the_version(fleet):
    two_apps(fleet)
    for expected in (1, 2, 3):
        code, _, _ = write(fleet, T0 + timedelta(hours=expected))
        assert code == 0
        assert doc(fleet)["version"] == expected
        fleet.commit(f"release {expected}")


def test_since_carries_over_for_unchanged_apps_and_resets_for_changed_ones(fleet):
    two_apps(fleet)
    write(fleet, T0)
    fleet.commit("release 1")
    fleet.app("gw", image="127.0.0.1:5000/gw:1.1")
    fleet.commit("gw 1.1")
    later = T0 + timedelta(days=2)
    write(fleet, later)
    apps = doc(fleet)["apps"]
    assert apps["apps/kiosk/app.yaml"]["since"] == "2026-03-01T12:00:00Z"
    assert apps["apps/gw/app.yaml"] == {
        "sha256": sha(fleet, "apps/gw/app.yaml"),
        "since": "2026-03-03T12:00:00Z",
    }
    assert doc(fleet)["source_commit"] == fleet.head()


def test_invalid_manifests_write_nothing_and_exit_1(fleet):
    two_apps(fleet)
    write(fleet, T0)
    before = fleet.read(RELEASE)
    fleet.write("apps/gw/app.yaml", "kind: App\nspec: {containers: []}\n")
    code, data, out = write(fleet, T0 + timedelta(hours=1))
    assert (code, data) == (1, None)
    assert fleet.read(RELEASE) == before
    lines = out.splitlines()
    assert lines[0].startswith("apps/gw/app.yaml: ")
    assert lines[-1] == "release: nothing written"
    assert not (fleet.root / ".fleet/release.json.tmp").exists()


def test_a_corrupt_previous_release_writes_nothing_and_says_how_to_recover(fleet):
    two_apps(fleet)
    fleet.write(RELEASE, "{not json")
    fleet.commit("a broken release")
    code, _, out = write(fleet, T0)
    assert code == 1
    assert fleet.read(RELEASE) == b"{not json"
    assert ".fleet/release.json: is not valid JSON" in out
    assert "deleting it would restart versions at 1" in out


def test_release_through_the_cli_honours_expires_in(fleet, run_cli):
    two_apps(fleet)
    result = run_cli("release", str(fleet.root), "--no-sign", "--expires-in", "7d")
    assert result.code == 0, result.err
    body = doc(fleet)
    created = datetime.strptime(body["created"], "%Y-%m-%dT%H:%M:%SZ")
    expires = datetime.strptime(body["expires"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires - created == timedelta(days=7)
    assert result.out.startswith("release 1: 2 app(s), commit ")


def test_bad_expires_in_exits_2_and_writes_nothing(fleet, run_cli):
    two_apps(fleet)
    for value in ("7 days", "500ms", "999999999d"):
        result = run_cli("release", str(fleet.root), "--no-sign", "--expires-in", value)
        assert result.code == 2, value
        assert result.err.startswith("release: --expires-in"), value
    assert not (fleet.root / RELEASE).exists()


def test_release_without_a_signer_exits_1_and_leaves_no_unsigned_release(
    fleet, run_cli, monkeypatch
):
    from reconciler.adapters import sigstore_signer

    for name in (*sigstore_signer._CI_MARKERS, "ACTIONS_ID_TOKEN_REQUEST_URL", "SIGSTORE_ID_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    two_apps(fleet)
    result = run_cli("release", str(fleet.root))
    assert result.code == 1
    assert "signing failed" in result.err and "id-token: write" in result.err
    assert not (fleet.root / RELEASE).exists()


def test_a_directory_without_apps_is_not_released(tmp_path, run_cli):
    result = run_cli("release", str(tmp_path), "--no-sign")
    assert result.code == 2
    assert result.err == f"release: {tmp_path}: no apps/ directory; not a fleet repo\n"
    assert not (tmp_path / RELEASE).exists()


def test_uncommitted_manifests_are_refused_and_nothing_is_written(fleet, run_cli):
    two_apps(fleet)
    fleet.app("gw", image="127.0.0.1:5000/gw:2.0")
    fleet.app("new", image="127.0.0.1:5000/new:1")
    fleet.remove("apps/kiosk/app.yaml")
    result = run_cli("release", str(fleet.root), "--no-sign")
    assert result.code == 1
    *refused, last = result.lines
    assert [line.split(":")[0] for line in refused] == [
        "apps/gw/app.yaml",
        "apps/kiosk/app.yaml",
        "apps/new/app.yaml",
    ]
    assert all("not committed" in line and "commit it, then release" in line for line in refused)
    assert last == "release: nothing written"
    assert not (fleet.root / RELEASE).exists()


def test_release_pins_the_committed_bytes(fleet):
    two_apps(fleet)
    fleet.write("apps/gw/notes.txt", "not a manifest, not committed\n")
    code, _, _ = write(fleet, T0)
    assert code == 0
    committed = fleet.git("cat-file", "blob", "HEAD:apps/gw/app.yaml").encode()
    assert doc(fleet)["apps"]["apps/gw/app.yaml"]["sha256"] == hashlib.sha256(committed).hexdigest()


def test_release_outside_git_is_refused(tmp_path, run_cli):
    (tmp_path / "apps/gw").mkdir(parents=True)
    (tmp_path / "apps/gw/app.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: App\nmetadata: {name: gw}\n"
        "spec: {selector: {}, containers: [{name: main, image: busybox}]}\n"
    )
    result = run_cli("release", str(tmp_path), "--no-sign")
    assert result.code == 2
    assert result.err == (
        f"release: {tmp_path}: not a Git work tree with a commit; devices read committed "
        "files only: commit the fleet repo, then release\n"
    )
    assert not (tmp_path / RELEASE).exists()


def test_console_script_release_then_plan_shows_no_changes(fleet):
    two_apps(fleet)
    released = run_console_script("release", "--no-sign", cwd=fleet.root)
    assert released.code == 0, released.err
    assert released.err == ""
    assert doc(fleet)["source_commit"] == fleet.head()
    fleet.commit("release 1")
    planned = run_console_script("plan", "--labels", "", cwd=fleet.root)
    assert planned.code == 0, planned.err
    assert planned.out.endswith("plan: 1 device(s), 0 with changes\n")
