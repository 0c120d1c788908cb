"""`reconciler validate [REPO]` (SPEC 3.3): one line per problem naming file and field; 0 or 1."""

from __future__ import annotations

import pytest

from testkit.cli import run_console_script
from testkit.fleet_repos import FleetRepo, manifest

# Aliases nine levels deep, ten each: a billion laughs that must be refused before expanding.
BILLION_LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)

# (file, expected start of its one problem line)
BROKEN = {
    "apps/unknown/app.yaml": "apps/unknown/app.yaml: spec.containers[1].colour: unknown field",
    "apps/port/app.yaml": "apps/port/app.yaml: spec.containers[1].ports[0]: expected",
    "apps/dup/app.yaml": "apps/dup/app.yaml: spec.containers[1].name: duplicate container name",
    "apps/op/app.yaml": "apps/op/app.yaml: spec.selector.matchExpressions[0].operator: expected",
    "apps/laughs/app.yaml": "apps/laughs/app.yaml: the document expands to more than",
    "apps/latin1/app.yaml": "apps/latin1/app.yaml: not valid UTF-8",
    "apps/link/app.yaml": "apps/link/app.yaml: is a symlink",
}


def break_manifests(fleet: FleetRepo) -> None:
    fleet.app("good")
    fleet.app("unknown", extra_container="{name: side, image: busybox, colour: red}")
    fleet.app("port", extra_container='{name: side, image: busybox, ports: ["80"]}')
    fleet.app("dup", extra_container="{name: main, image: busybox}")
    fleet.app("op", selector="{matchExpressions: [{key: ring, operator: Near, values: [canary]}]}")
    fleet.write("apps/laughs/app.yaml", BILLION_LAUGHS)
    fleet.write(
        "apps/latin1/app.yaml", manifest("latin1").replace("1.0", "1.0 \xe9").encode("latin-1")
    )
    target = fleet.write("elsewhere/link.yaml", manifest("link"))
    (fleet.root / "apps/link").mkdir()
    (fleet.root / "apps/link/app.yaml").symlink_to(target)


def fix_manifests(fleet: FleetRepo) -> None:
    fleet.remove("apps/link/app.yaml")
    for name in ("unknown", "port", "dup", "op", "laughs", "latin1", "link"):
        fleet.app(name)


def test_valid_repo_exits_0_and_counts_the_apps(fleet, run_cli):
    fleet.app("gw", selector="{matchLabels: {role: gateway}}")
    fleet.app("kiosk")
    result = run_cli("validate", str(fleet.root))
    assert result.code == 0
    assert result.lines == ["validate: 2 app manifest(s) valid"]


def test_several_broken_manifests_print_one_line_each_with_file_and_field_and_exit_1(
    fleet, run_cli
):
    break_manifests(fleet)
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    *problems, summary = result.lines
    assert summary == f"validate: {len(BROKEN)} problem(s) in {len(BROKEN)} file(s)"
    assert len(problems) == len(BROKEN)
    for line, (file, start) in zip(problems, sorted(BROKEN.items()), strict=True):
        assert line.startswith(start), (file, line)
    assert not any("apps/good" in line for line in problems)


def test_validate_exits_0_once_the_broken_manifests_are_fixed(fleet, run_cli):
    break_manifests(fleet)
    assert run_cli("validate", str(fleet.root)).code == 1
    fix_manifests(fleet)
    result = run_cli("validate", str(fleet.root))
    assert (result.code, result.lines) == (0, ["validate: 8 app manifest(s) valid"])


def test_console_script_validate_fails_then_passes_in_the_current_directory(fleet):
    break_manifests(fleet)
    fleet.commit("broken")
    failed = run_console_script("validate", cwd=fleet.root)
    assert failed.code == 1
    assert len(failed.out.splitlines()) == len(BROKEN) + 1
    assert failed.err == ""
    fix_manifests(fleet)
    fleet.commit("fixed")
    passed = run_console_script("validate", cwd=fleet.root)
    assert (passed.code, passed.out, passed.err) == (0, "validate: 8 app manifest(s) valid\n", "")


def test_validate_judges_head_and_names_the_edits_it_did_not_judge(fleet, run_cli):
    fleet.app("gw")
    fleet.commit("gw")
    fleet.write("apps/gw/app.yaml", "kind: App\n")  # broken, but not committed
    fleet.app("new")
    result = run_cli("validate", str(fleet.root))
    assert (result.code, result.lines) == (0, ["validate: 1 app manifest(s) valid"])
    warning, *listed = result.err.splitlines()
    assert warning.startswith("warning: 2 file(s) differ from the commit validated (HEAD ")
    assert "commit them and run validate again" in warning
    assert listed == ["  apps/gw/app.yaml", "  apps/new/app.yaml"]
    fleet.commit("broken gw")
    assert run_cli("validate", str(fleet.root)).code == 1


def test_outside_git_validate_judges_the_files_on_disk_and_says_so(tmp_path, run_cli):
    (tmp_path / "apps/gw").mkdir(parents=True)
    (tmp_path / "apps/gw/app.yaml").write_text(manifest("gw"))
    result = run_cli("validate", str(tmp_path))
    assert (result.code, result.lines) == (0, ["validate: 1 app manifest(s) valid"])
    assert result.err == (
        "warning: not a Git work tree with a commit: validated the files on disk; "
        "devices read only committed files\n"
    )


def test_every_problem_of_one_manifest_is_listed(fleet, run_cli):
    fleet.write(
        "apps/gw/app.yaml",
        manifest("GW", extra_container='{name: side, image: "Bad Image", restart: sometimes}'),
    )
    result = run_cli("validate", str(fleet.root))
    fields = [line.split(": ")[1] for line in result.lines[:-1]]
    assert fields == [
        "metadata.name",
        "spec.containers[1].image",
        "spec.containers[1].restart",
    ]


def test_duplicate_app_names_across_files_are_a_problem(fleet, run_cli):
    fleet.write("apps/one/app.yaml", manifest("same"))
    fleet.write("apps/two/app.yaml", manifest("same"))
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert result.lines[0].startswith(
        'apps/two/app.yaml: metadata.name: duplicate app name "same" (also in apps/one/app.yaml)'
    )


def test_a_symlinked_directory_under_apps_is_a_problem(fleet, run_cli, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/app.yaml").write_text(manifest("outside"))
    (fleet.root / "apps").mkdir()
    (fleet.root / "apps/outside").symlink_to(tmp_path / "outside")
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert result.lines[0] == "apps/outside: is a symlink to a directory; devices do not follow it"


def test_file_names_with_control_characters_stay_on_one_line(fleet, run_cli):
    fleet.write("apps/evil\n\x1b[2Jname/app.yaml", "kind: [")
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    # Invalid YAML, and a path no release can pin; nothing a terminal would act on.
    *problems, summary = result.lines
    assert summary == "validate: 2 problem(s) in 1 file(s)"
    assert all(line.startswith("apps/evil\\n\\x1b[2Jname/app.yaml: ") for line in problems)
    assert "\x1b" not in result.out


def test_a_path_the_release_could_not_pin_fails_validation(fleet, run_cli):
    fleet.write('apps/say-"hi"/app.yaml', manifest("hi"))
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert "contains a control character, a backslash or a quote" in result.lines[0]


def test_an_invalid_inventory_is_reported_with_its_field_path(fleet, run_cli):
    fleet.app("gw")
    fleet.write("devices/inventory.yaml", "devices:\n  - {name: GW 01, labels: {role: gateway}}\n")
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert result.lines[0].startswith("devices/inventory.yaml: devices[0].name: ")


def test_a_corrupt_release_file_is_reported(fleet, run_cli):
    fleet.app("gw")
    fleet.write(".fleet/release.json", '{"version": 1}')
    result = run_cli("validate", str(fleet.root))
    assert result.code == 1
    assert ".fleet/release.json: apps: missing" in result.lines


def test_a_repo_without_apps_is_valid_and_says_so(fleet, run_cli):
    result = run_cli("validate", str(fleet.root))
    assert (result.code, result.lines) == (0, ["validate: 0 app manifest(s) valid"])


def test_a_missing_repo_directory_is_a_usage_error(tmp_path, run_cli):
    result = run_cli("validate", str(tmp_path / "nope"))
    assert result.code == 2
    assert result.err == f"validate: {tmp_path / 'nope'}: not a directory\n"


@pytest.mark.parametrize("verb", ["validate", "plan", "release"])
def test_help_of_every_repo_verb_shows_an_example(verb, run_cli):
    result = run_cli(verb, "--help")
    assert result.code == 0
    assert "example:" in result.out
    assert f"reconciler {verb} " in result.out.split("example:")[1]
