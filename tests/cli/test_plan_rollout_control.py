"""`reconciler plan` shows paused and aborted rollouts (SPEC 2.3): from the work tree's
`.fleet/rollout.yaml` for the next release, from the last release's entries for the devices
now."""

from __future__ import annotations

from tests.cli.test_plan import GATEWAY, inventory_of, released, rev, table

__all__ = ["released"]


def test_a_paused_change_shows_devices_keeping_what_they_run(released, run_cli):
    old = rev(released, "gw")
    released.app("gw", selector=GATEWAY, image="127.0.0.1:5000/gw:1.1")
    new = rev(released, "gw")
    released.write(".fleet/rollout.yaml", "apps:\n  gw: {paused: true}\n")

    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))

    assert result.code == 0, result.err
    mark, revision, status, _images, note = table(result.out)["gw-01"]["gw"]
    assert (mark, revision, status) == ("!", old, "paused")
    assert note == f"new revision {new} is paused: devices not on it keep what they run"
    assert "x aborted" in result.lines[2]


def test_an_aborted_newest_revision_shows_devices_leaving_it(released, run_cli):
    gw = rev(released, "gw")
    released.write(".fleet/rollout.yaml", f"apps:\n  gw: {{abort: {gw}}}\n")

    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))

    assert result.code == 0, result.err
    mark, _revision, status, _images, note = table(result.out)["gw-02"]["gw"]
    assert (mark, status) == ("x", "aborted")
    assert note.startswith(f"revision {gw} is aborted: a device running it returns")
    assert "mon" in table(result.out)["gw-02"]  # other apps unaffected


def test_an_abort_naming_no_revision_of_the_app_stops_the_plan(released, run_cli):
    released.write(".fleet/rollout.yaml", "apps:\n  gw: {abort: 0123456789ab}\n")

    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))

    assert result.code == 1
    assert ".fleet/rollout.yaml: apps.gw.abort: 0123456789ab is no revision of gw" in result.out
