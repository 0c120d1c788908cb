"""`reconciler rollout pause|resume|abort APP [REPO]` (SPEC 3.3): edits `.fleet/rollout.yaml`
in the checkout, keeping comments and other entries, idempotently; release then signs it."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime

from reconciler.fleet import release_verb

CONTROL = ".fleet/rollout.yaml"
GW = "apps/gw/app.yaml"


def sha(fleet, rel):
    return hashlib.sha256(fleet.read(rel)).hexdigest()


def setup(fleet):
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    fleet.app("web")
    fleet.commit("apps")
    old = sha(fleet, GW)
    fleet.app("gw", image="127.0.0.1:5000/gw:1.1")
    fleet.commit("gw 1.1")
    return old, sha(fleet, GW)


def release(fleet):
    out = io.StringIO()
    code, _ = release_verb.write_release(
        fleet.root, now=datetime(2026, 3, 1, tzinfo=UTC), expires_in=86400.0, out=out, err=out
    )
    assert code == 0, out.getvalue()
    return json.loads(fleet.read(".fleet/release.json"))["apps"]


def test_pause_writes_the_file_and_release_signs_it(fleet, run_cli):
    setup(fleet)
    result = run_cli("rollout", "pause", "web", str(fleet.root))
    assert result.code == 0, result.err
    assert "rollout pause: web: paused in .fleet/rollout.yaml" in result.out
    assert "commit .fleet/rollout.yaml, then run reconciler release" in result.out
    fleet.commit("pause web")
    assert release(fleet)["apps/web/app.yaml"]["paused"] is True


def test_pause_twice_changes_nothing_and_says_so(fleet, run_cli):
    setup(fleet)
    run_cli("rollout", "pause", "web", str(fleet.root))
    before = fleet.read(CONTROL)
    result = run_cli("rollout", "pause", "web", str(fleet.root))
    assert result.code == 0
    assert "already says so; unchanged" in result.out
    assert fleet.read(CONTROL) == before


def test_edits_keep_the_operators_comments(fleet, run_cli):
    setup(fleet)
    fleet.write(
        CONTROL, "# kiosk rollouts wait for the trade fair\napps:\n  web: {paused: true}  # fair\n"
    )
    assert run_cli("rollout", "pause", "gw", str(fleet.root)).code == 0
    assert fleet.read(CONTROL) == (
        b"# kiosk rollouts wait for the trade fair\napps:\n  web: {paused: true}  # fair\n"
        b"  gw: {paused: true}\n"
    )
    assert run_cli("rollout", "resume", "gw", str(fleet.root)).code == 0
    assert fleet.read(CONTROL).endswith(b"  web: {paused: true}  # fair\n")


def test_abort_defaults_to_the_revision_the_release_pins(fleet, run_cli):
    _, released = setup(fleet)
    release(fleet)
    fleet.commit("release gw 1.1")
    fleet.app("gw", image="127.0.0.1:5000/gw:1.2")  # merged, not released yet
    fleet.commit("gw 1.2")
    result = run_cli("rollout", "abort", "gw", str(fleet.root))
    assert result.code == 0, result.err
    assert f"aborting revision {released[:12]}" in result.out
    assert fleet.read(CONTROL).endswith(f'  gw: {{abort: "{released}"}}\n'.encode())
    fleet.commit("abort gw 1.1")
    assert release(fleet)[GW]["abort"] == released


def test_abort_resolves_a_prefix_and_refuses_an_unknown_one(fleet, run_cli):
    old, _ = setup(fleet)
    result = run_cli("rollout", "abort", "gw", str(fleet.root), "--revision", old[:12].upper())
    assert result.code == 0, result.err
    assert f'abort: "{old}"' in fleet.read(CONTROL).decode()
    bad = run_cli("rollout", "abort", "gw", str(fleet.root), "--revision", "0" * 12)
    assert bad.code == 1
    assert "is no revision of gw" in bad.err
    short = run_cli("rollout", "abort", "gw", str(fleet.root), "--revision", old[:8])
    assert short.code == 1
    assert "at least 12 hex digits" in short.err
    fleet.commit("abort")
    assert release(fleet)[GW]["abort"] == old


def test_an_unknown_app_is_refused_and_nothing_is_written(fleet, run_cli):
    setup(fleet)
    result = run_cli("rollout", "pause", "wbe", str(fleet.root))
    assert result.code == 1
    assert 'no app named "wbe" under apps/ (apps: gw, web)' in result.err
    assert not (fleet.root / CONTROL).exists()


def test_resume_of_an_app_that_is_gone_removes_its_entry(fleet, run_cli):
    setup(fleet)
    fleet.write(CONTROL, "apps:\n  old: {paused: true}\n  web: {paused: true}\n")
    assert run_cli("rollout", "resume", "old", str(fleet.root)).code == 0
    assert fleet.read(CONTROL) == b"apps:\n  web: {paused: true}\n"


def test_an_invalid_file_is_not_edited(fleet, run_cli):
    setup(fleet)
    fleet.write(CONTROL, "apps:\n  web: {paused: maybe}\n")
    result = run_cli("rollout", "pause", "gw", str(fleet.root))
    assert result.code == 1
    assert ".fleet/rollout.yaml: apps.web.paused: expected true" in result.err
    assert fleet.read(CONTROL) == b"apps:\n  web: {paused: maybe}\n"


def test_rollout_alone_shows_its_actions_as_bad_usage(run_cli):
    result = run_cli("rollout")
    assert result.code == 2
    assert "pause" in result.out and "gate" in result.out


def test_bad_prometheus_options_are_bad_usage_before_any_query(fleet, run_cli):
    setup(fleet)
    url = ("--prometheus", "http://127.0.0.1:1")
    for extra, words in (
        (("--max-failures", "ten"), "expected a device count N or a percent P%"),
        (("--max-failures", "150%"), "a percent must be 0..100"),
        (("--max-failures", "1", "--poll-interval", "soon"), "fleet-status"),
        (("--max-failures", "1", "--lookback", "1 day"), "--lookback"),
    ):
        result = run_cli("fleet-status", str(fleet.root), *url, *extra)
        assert result.code == 2, extra
        assert words in result.err, (extra, result.err)
    gate = run_cli("rollout", "gate", str(fleet.root), *url)
    assert gate.code == 2  # --max-failures is required
