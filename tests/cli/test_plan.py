"""`reconciler plan [REPO] --labels k=v,... | --inventory FILE` (SPEC 3.3): who gets what, and
what changes against the release committed in `.fleet/release.json`."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.core import release, rollout
from reconciler.fleet import plan as fleet_plan
from reconciler.fleet import release_verb
from reconciler.fleet.devices import Device
from testkit.cli import run_console_script
from testkit.fleet_repos import FleetRepo, manifest

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GATEWAY = "{matchLabels: {role: gateway}}"
KIOSK = "{matchLabels: {role: kiosk}}"
WAVES = "[{percent: 50}, {percent: 100, after: 1d}]"
INVENTORY = """devices:
  - {name: gw-01, labels: {role: gateway, ring: canary}}
  - {name: gw-02, labels: {role: gateway}}
  - {name: kiosk-01, labels: {role: kiosk}}
"""
DIGEST = "127.0.0.1:5000/gw@sha256:" + "b" * 64
ROW = re.compile(r"^  (\S) (\S+) +(\S+) +(\S+) *(.*)$")


def rev(fleet: FleetRepo, app: str) -> str:
    return hashlib.sha256(fleet.read(f"apps/{app}/app.yaml")).hexdigest()[:12]


def device_with_bucket(app: str, *, below: int | None = None, at_least: int | None = None) -> str:
    """A device name whose rollout bucket for `app` is in range (buckets are a stable hash)."""
    for n in range(1000):
        b = rollout.bucket(f"dev-{n}", app)
        if (below is None or b < below) and (at_least is None or b >= at_least):
            return f"dev-{n}"
    raise AssertionError("no such device")


def table(out: str) -> dict[str, dict[str, tuple[str, str, str, str, str]]]:
    """device -> app -> (mark, revision, status, images, note) from plan's output."""
    result: dict[str, dict[str, tuple[str, str, str, str, str]]] = {}
    device = ""
    for line in out.splitlines():
        if line.startswith("device "):
            device = line.removeprefix("device ").split(":")[0]
            result[device] = {}
        elif match := ROW.match(line):
            mark, app, revision, status, rest = match.groups()
            images, _, note = rest.partition("(")
            result[device][app] = (mark, revision, status, images.strip(), note.rstrip(")"))
    return result


def inventory_of(fleet: FleetRepo) -> str:
    return str(fleet.root / "devices/inventory.yaml")


def plan(fleet: FleetRepo, now: datetime, *devices: Device) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fleet_plan.plan(fleet.root, devices=devices, now=now, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def released(fleet: FleetRepo) -> FleetRepo:
    """gw (gateways), kiosk (kiosks), mon (every device), released at T0 and committed."""
    fleet.app("gw", selector=GATEWAY, image="127.0.0.1:5000/gw:1.0")
    fleet.app("kiosk", selector=KIOSK, image="127.0.0.1:5000/kiosk:1.0")
    fleet.app("mon", image="127.0.0.1:5000/mon:1.0")
    fleet.write("devices/inventory.yaml", INVENTORY)
    fleet.commit("apps")
    code, _ = release_verb.write_release(fleet.root, now=T0, expires_in=86400.0, out=io.StringIO())
    assert code == 0
    fleet.commit("release 1")
    return fleet


def test_plan_with_an_inventory_prints_who_gets_what(fleet, run_cli):
    fleet.app("gw", selector=GATEWAY, image="127.0.0.1:5000/gw:1.0")
    fleet.app("mon", image="127.0.0.1:5000/mon:1.0")
    inventory = fleet.write("devices/inventory.yaml", INVENTORY)
    fleet.commit()
    result = run_cli("plan", str(fleet.root), "--inventory", str(inventory))
    assert result.code == 0
    gw, mon = rev(fleet, "gw"), rev(fleet, "mon")
    body = result.out.split("\n", 3)[3]  # after the time, the release and the legend
    assert body == (
        "\n"
        "device gw-01: ring=canary, role=gateway\n"
        f"  + gw   {gw}  new  main=127.0.0.1:5000/gw:1.0   (new app)\n"
        f"  + mon  {mon}  new  main=127.0.0.1:5000/mon:1.0  (new app)\n"
        "\n"
        "device gw-02: role=gateway\n"
        f"  + gw   {gw}  new  main=127.0.0.1:5000/gw:1.0   (new app)\n"
        f"  + mon  {mon}  new  main=127.0.0.1:5000/mon:1.0  (new app)\n"
        "\n"
        "device kiosk-01: role=kiosk\n"
        f"  + mon  {mon}  new  main=127.0.0.1:5000/mon:1.0  (new app)\n"
        "    not selected: gw\n"
        "\n"
        "plan: 3 device(s), 3 with changes\n"
    )
    assert result.lines[1] == (
        "against no release yet (.fleet/release.json not found): every selected app is new"
    )
    assert result.lines[2].startswith("legend: + new  ~ changed  = unchanged  - removed  ! ")


def test_an_unchanged_release_plans_no_changes(released, run_cli):
    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))
    assert result.code == 0, result.err
    assert result.lines[1] == (
        f"against release 1 (commit {released.git('rev-parse', 'HEAD~1').strip()[:12]}, "
        "created 2026-03-01T12:00:00Z)"
    )
    rows = table(result.out)
    assert rows["gw-01"] == {
        "gw": ("=", rev(released, "gw"), "unchanged", "main=127.0.0.1:5000/gw:1.0", ""),
        "mon": ("=", rev(released, "mon"), "unchanged", "main=127.0.0.1:5000/mon:1.0", ""),
    }
    assert result.lines[-1] == "plan: 3 device(s), 0 with changes"


def test_a_new_app_changed_app_removed_app_and_lost_selector_each_show_on_their_devices(
    released, run_cli
):
    old_gw, old_mon, old_kiosk = (rev(released, app) for app in ("gw", "mon", "kiosk"))
    released.app("gw", selector=GATEWAY, image="127.0.0.1:5000/gw:1.1")
    released.app("extra", image="127.0.0.1:5000/extra:1")
    released.remove("apps/kiosk/app.yaml")
    released.app("mon", selector=GATEWAY, image="127.0.0.1:5000/mon:1.0")
    new_mon = rev(released, "mon")
    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))
    assert result.code == 0, result.err
    rows = table(result.out)
    assert rows["gw-02"] == {
        "extra": ("+", rev(released, "extra"), "new", "main=127.0.0.1:5000/extra:1", "new app"),
        "gw": ("~", rev(released, "gw"), "changed", "main=127.0.0.1:5000/gw:1.1", f"was {old_gw}"),
        "mon": ("~", new_mon, "changed", "main=127.0.0.1:5000/mon:1.0", f"was {old_mon}"),
    }
    kiosk = rows["kiosk-01"]
    assert kiosk["kiosk"] == ("-", old_kiosk, "removed", "", "no longer in the repo")
    assert kiosk["mon"] == ("-", old_mon, "removed", "", "selector no longer matches")
    assert "    not selected: gw" in result.out.split("device kiosk-01")[1]
    assert result.lines[-1] == "plan: 3 device(s), 3 with changes"


def test_an_app_whose_selector_now_matches_is_new_on_that_device(released):
    released.app("kiosk", selector="{}", image="127.0.0.1:5000/kiosk:1.0")
    _, out, _ = plan(released, T0, Device("gw-01", {"role": "gateway"}))
    assert table(out)["gw-01"]["kiosk"] == (
        "+",
        rev(released, "kiosk"),
        "new",
        "main=127.0.0.1:5000/kiosk:1.0",
        "selector now matches",
    )


def test_unchanged_apps_run_the_image_digests_the_release_pinned(fleet):
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    fleet.commit()
    images = {"apps/gw/app.yaml": {"main": DIGEST}}
    release_verb.write_release(
        fleet.root, now=T0, expires_in=86400.0, images=images, out=io.StringIO()
    )
    fleet.commit()
    _, out, _ = plan(fleet, T0, Device("d", {}))
    assert table(out)["d"]["gw"] == ("=", rev(fleet, "gw"), "unchanged", f"main={DIGEST}", "")


def test_a_changed_app_with_waves_updates_devices_in_the_open_wave_and_others_stay(released):
    old = rev(released, "gw")
    released.app("gw", selector=GATEWAY, image="127.0.0.1:5000/gw:2.0", waves=WAVES)
    new = rev(released, "gw")
    early = device_with_bucket("gw", below=50)
    late = device_with_bucket("gw", at_least=50)
    now = T0 + timedelta(days=3)
    gateway = {"role": "gateway"}
    _, out, _ = plan(released, now, Device(early, gateway), Device(late, gateway))
    rows = table(out)
    *columns, note = rows[early]["gw"]
    assert columns == ["~", new, "changed", "main=127.0.0.1:5000/gw:2.0"]
    assert note.startswith(f"was {old}; bucket ")
    assert note.endswith(" < 50% of wave 1 opened 2026-03-04T12:00:00Z")
    # The late device keeps the old revision and image; the wave counts from now, not the
    # old release, because this revision's `since` starts when it is released.
    *columns, note = rows[late]["gw"]
    assert columns == ["!", old, "waiting", "main=127.0.0.1:5000/gw:1.0"]
    assert note.startswith(f"new revision {new} is waiting for its rollout wave: bucket ")
    assert note.endswith("; wave 2 (100%) opens 2026-03-05T12:00:00Z")
    assert out.splitlines()[-1] == "plan: 2 device(s), 1 with changes"


def test_an_unchanged_app_mid_rollout_is_decided_at_now_from_its_release_since(fleet):
    fleet.app("gw", waves=WAVES)
    fleet.commit()
    release_verb.write_release(fleet.root, now=T0, expires_in=86400.0 * 9, out=io.StringIO())
    fleet.commit()
    late = device_with_bucket("gw", at_least=50)
    _, out, _ = plan(fleet, T0 + timedelta(hours=1), Device(late, {}))
    *columns, note = table(out)[late]["gw"]
    assert columns == ["!", "-", "waiting", ""]
    assert note.startswith(f"stays on an older revision than release 1; {rev(fleet, 'gw')} is ")
    assert out.splitlines()[-1] == "plan: 1 device(s), 0 with changes"
    _, out, _ = plan(fleet, T0 + timedelta(days=2), Device(late, {}))
    assert table(out)[late]["gw"][:3] == ("=", rev(fleet, "gw"), "unchanged")


def test_a_new_app_with_waves_gives_late_devices_nothing_yet(fleet):
    fleet.app("gw", waves=WAVES)
    late = device_with_bucket("gw", at_least=50)
    _, out, _ = plan(fleet, T0, Device(late, {}))
    *columns, note = table(out)[late]["gw"]
    assert columns == ["!", "-", "waiting", ""]
    assert note.startswith(f"new app {rev(fleet, 'gw')} is waiting for its rollout wave: bucket")


def test_a_corrupt_release_file_warns_and_plans_as_if_there_were_none(released, run_cli):
    released.write(".fleet/release.json", '{"version": "many"}')
    result = run_cli("plan", str(released.root), "--labels", "role=kiosk")
    assert result.code == 0
    assert "warning: .fleet/release.json: version: expected a positive integer" in result.err
    assert result.err.endswith(
        "warning: .fleet/release.json is unusable; planning as if there were no release\n"
    )
    assert result.lines[1].startswith("against no release (.fleet/release.json is unusable)")
    assert {app: row[0] for app, row in table(result.out)["device"].items()} == {
        "kiosk": "+",
        "mon": "+",
    }


def hand_release(fleet: FleetRepo, pins: dict[str, str], *, source_commit: str) -> None:
    """Write a release pinning `pins` ({path: manifest text}) as an older tool could have made
    it: `release` itself only pins committed bytes."""
    built = release.build(
        {path: body.encode() for path, body in pins.items()},
        previous=None,
        now=T0,
        source_commit=source_commit,
        expires_in=86400.0,
    )
    fleet.write(".fleet/release.json", release.serialize(built))


def test_a_pinned_manifest_missing_from_git_and_work_tree_is_warned_about(fleet):
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    commit = fleet.commit()
    never_committed = manifest("gw", image="127.0.0.1:5000/gw:9.9")
    hand_release(fleet, {"apps/gw/app.yaml": never_committed}, source_commit=commit)
    code, out, err = plan(fleet, T0, Device("d", {}))
    assert code == 0
    assert err.startswith("warning: apps/gw/app.yaml: pinned by release 1, but its bytes are ")
    assert table(out)["d"]["gw"][0] == "+"


def test_a_release_whose_bytes_are_only_at_head_is_read_at_head(fleet):
    fleet.app("gw", image="127.0.0.1:5000/gw:1.0")
    first = fleet.commit()
    hand_release(
        fleet,
        {"apps/gw/app.yaml": manifest("gw", image="127.0.0.1:5000/gw:2.0")},
        source_commit=first,
    )
    fleet.app("gw", image="127.0.0.1:5000/gw:2.0")
    fleet.commit("gw 2.0 and release 1")
    code, out, err = plan(fleet, T0, Device("d", {}))
    assert (code, err) == (0, "")
    assert table(out)["d"]["gw"][:3] == ("=", rev(fleet, "gw"), "unchanged")


def test_plan_with_labels_plans_one_device_named_by_device(released, run_cli):
    result = run_cli(
        "plan", str(released.root), "--labels", "role=gateway, ring=canary", "--device", "gw-09"
    )
    assert result.code == 0
    assert "device gw-09: ring=canary, role=gateway" in result.lines
    assert set(table(result.out)["gw-09"]) == {"gw", "mon"}


def test_empty_labels_plan_a_device_with_no_labels(released, run_cli):
    result = run_cli("plan", str(released.root), "--labels", "")
    assert "device device: no labels" in result.lines
    assert set(table(result.out)["device"]) == {"mon"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("role", 'plan: --labels: expected key=value, got "role"'),
        ("=gateway", 'plan: --labels: expected key=value, got "=gateway"'),
        ("ro le=x", 'plan: --labels: label key "ro le" is invalid'),
        ("role=a b", 'plan: --labels: label value "a b" is invalid'),
        ("a=1,a=2", 'plan: --labels: "a" is given twice'),
    ],
)
def test_bad_labels_syntax_exits_2_with_a_message(released, run_cli, labels, message):
    result = run_cli("plan", str(released.root), "--labels", labels)
    assert result.code == 2
    assert result.err.startswith(message)
    assert result.out == ""


def test_a_device_name_that_is_not_a_dns_label_exits_2(released, run_cli):
    result = run_cli("plan", str(released.root), "--labels", "a=b", "--device", "GW_01")
    assert result.code == 2
    assert result.err.startswith('plan: device name "GW_01" is not a DNS label')


def test_a_missing_or_invalid_inventory_exits_2(released, run_cli, tmp_path):
    missing = run_cli("plan", str(released.root), "--inventory", str(tmp_path / "none.yaml"))
    assert missing.code == 2
    assert (
        missing.err
        == f"plan: {tmp_path / 'none.yaml'}: cannot be read: No such file or directory\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [{name: x, colour: red}]\n")
    invalid = run_cli("plan", str(released.root), "--inventory", str(bad))
    assert invalid.code == 2
    assert invalid.err.startswith(f"plan: {bad}: devices[0].colour: unknown field")


def test_plan_needs_exactly_one_of_labels_and_inventory(released, run_cli):
    assert run_cli("plan", str(released.root)).code == 2
    both = run_cli("plan", str(released.root), "--labels", "a=b", "--inventory", "x.yaml")
    assert both.code == 2
    assert "not allowed with argument" in both.err


def test_plan_refuses_invalid_manifests_with_exit_1(released, run_cli):
    released.write("apps/gw/app.yaml", "kind: App\n")
    result = run_cli("plan", str(released.root), "--labels", "role=gateway")
    assert result.code == 1
    assert result.lines[-1] == "plan: fix the manifests first (reconciler validate)"
    assert result.lines[0].startswith("apps/gw/app.yaml: ")


def test_plan_columns_line_up_across_devices(released, run_cli):
    released.app("a-much-longer-app-name", image="127.0.0.1:5000/x:1")
    result = run_cli("plan", str(released.root), "--inventory", inventory_of(released))
    rows = [line for line in result.lines if ROW.match(line)]
    assert len(rows) == 9
    revision_columns = {line.index(m.group(3)) for line in rows if (m := ROW.match(line))}
    status_columns = {line.index(m.group(4), 20) for line in rows if (m := ROW.match(line))}
    assert len(revision_columns) == 1
    assert len(status_columns) == 1


def test_console_script_plan_with_inventory(released):
    result = run_console_script("plan", "--inventory", "devices/inventory.yaml", cwd=released.root)
    assert result.code == 0, result.err
    assert result.err == ""
    assert set(table(result.out)) == {"gw-01", "gw-02", "kiosk-01"}
    assert result.out.endswith("plan: 3 device(s), 0 with changes\n")
