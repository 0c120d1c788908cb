"""`.fleet/rollout.yaml` (SPEC 2.3) carried by `reconciler release` into the signed release, and
checked by `validate`: entries name committed apps, abort prefixes resolve to full revisions."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime

from reconciler.fleet import release_verb
from testkit.fleet_repos import FleetRepo

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RELEASE = ".fleet/release.json"
CONTROL = ".fleet/rollout.yaml"
GW = "apps/gw/app.yaml"
WEB = "apps/web/app.yaml"


def release(fleet: FleetRepo) -> tuple[int, str]:
    out = io.StringIO()
    code, _ = release_verb.write_release(
        fleet.root, now=T0, expires_in=30 * 86400.0, out=out, err=out
    )
    return code, out.getvalue()


def entries(fleet: FleetRepo) -> dict:
    return json.loads(fleet.read(RELEASE))["apps"]


def sha(fleet: FleetRepo, rel: str) -> str:
    return hashlib.sha256(fleet.read(rel)).hexdigest()


def two_revisions_of_gw(fleet: FleetRepo) -> tuple[str, str]:
    """gw committed at 1.0, then 1.1; web at 1.0. Returns (old, new) revisions of gw."""
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    fleet.app("web", image="127.0.0.1:5000/web:1.0")
    fleet.commit("first")
    old = sha(fleet, GW)
    fleet.app("gw", image="127.0.0.1:5000/gw:1.1")
    fleet.commit("gw 1.1")
    return old, sha(fleet, GW)


def test_release_carries_paused_and_resolves_the_newest_abort_prefix(fleet):
    _, new = two_revisions_of_gw(fleet)
    fleet.write(CONTROL, f"apps:\n  web: {{paused: true}}\n  gw: {{abort: {new[:12]}}}\n")
    fleet.commit("stop")
    code, out = release(fleet)
    assert code == 0, out
    assert entries(fleet)[WEB]["paused"] is True
    assert entries(fleet)[GW]["abort"] == new
    assert "paused" not in entries(fleet)[GW]
    assert f"{GW}: aborts revision {new[:12]}" in out
    assert f"{WEB}: paused" in out


def test_an_abort_prefix_of_an_older_revision_resolves_from_the_history(fleet, run_cli):
    old, _ = two_revisions_of_gw(fleet)
    fleet.write(CONTROL, f'apps:\n  gw: {{abort: "{old[:14]}"}}\n')
    fleet.commit("abort the old one")
    assert run_cli("validate", str(fleet.root)).code == 0
    code, out = release(fleet)
    assert code == 0, out
    assert entries(fleet)[GW]["abort"] == old


def test_an_unknown_app_or_revision_fails_release_and_validate_and_writes_nothing(fleet, run_cli):
    two_revisions_of_gw(fleet)
    fleet.write(CONTROL, "apps:\n  kiosk: {paused: true}\n  gw: {abort: '000000000000'}\n")
    fleet.commit("typos")
    code, out = release(fleet)
    assert code == 1
    assert not (fleet.root / RELEASE).exists()
    assert 'apps.kiosk: no app named "kiosk" is committed under apps/ at HEAD' in out
    assert "apps.gw.abort: 000000000000 is no revision of gw" in out
    assert "nothing written" in out
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert f"{CONTROL}: apps.kiosk:" in result.out
    assert f"{CONTROL}: apps.gw.abort:" in result.out


def test_an_invalid_file_fails_release_with_file_field_and_reason(fleet):
    two_revisions_of_gw(fleet)
    fleet.write(CONTROL, "apps:\n  gw: {paused: false}\n")
    fleet.commit("bad")
    code, out = release(fleet)
    assert code == 1
    assert f"{CONTROL}: apps.gw.paused: expected true (to resume, remove the entry)" in out


def test_release_reads_the_committed_file_and_refuses_an_uncommitted_edit(fleet):
    two_revisions_of_gw(fleet)
    fleet.write(CONTROL, "apps:\n  web: {paused: true}\n")
    code, out = release(fleet)
    assert code == 1
    assert f"{CONTROL}: differs from HEAD" in out
    fleet.commit("pause web")
    assert release(fleet)[0] == 0
    assert entries(fleet)[WEB]["paused"] is True


def test_resuming_drops_the_entry_from_the_next_release(fleet):
    two_revisions_of_gw(fleet)
    fleet.write(CONTROL, "apps:\n  web: {paused: true}\n")
    fleet.commit("pause web")
    assert release(fleet)[0] == 0
    fleet.commit("release")
    fleet.write(CONTROL, "apps: {}\n")
    fleet.commit("resume web")
    assert release(fleet)[0] == 0
    assert "paused" not in entries(fleet)[WEB]
