"""fleet-repo-template/ (SPEC 2 and 4): its manifests pass the CLI's own checks, and its GitHub
Actions workflows parse and do what the SPEC asks of them. GitHub Actions cannot run here, so the
workflows are checked as data: triggers, permissions and the reconciler commands they run."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from demo import run_demo
from reconciler.core import manifests
from testkit.cli import Run

TEMPLATE = Path(__file__).resolve().parents[2] / "fleet-repo-template"
WORKFLOWS = TEMPLATE / ".github" / "workflows"
SETUP_ACTION = TEMPLATE / ".github" / "actions" / "setup-reconciler" / "action.yml"
DEVICE_IDENTITY = (
    "https://github.com/${{ github.repository }}/.github/workflows/release.yml@refs/heads/main"
)
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")  # owner/repo[/path]@<commit sha>


def load(path: Path) -> dict[Any, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path}: expected a mapping"
    return doc


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True; GitHub reads it as "on".
    return workflow.get("on", workflow.get(True))


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    # A job that calls a reusable workflow (`uses:`) has no steps of its own.
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def scripts(workflow: dict[Any, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


def test_every_workflow_and_action_file_parses_with_a_name_and_jobs_or_steps():
    files = sorted(TEMPLATE.joinpath(".github").rglob("*.y*ml"))
    assert {f.name for f in files} == {
        "check.yml",
        "release.yml",
        "rollout-gate.yml",
        "action.yml",
    }
    for path in files:
        doc = load(path)
        assert doc.get("name"), path
        if path.parent == WORKFLOWS:
            assert triggers(doc) and doc["jobs"], path
            for job in doc["jobs"].values():
                assert (job.get("runs-on") and job.get("steps")) or job["uses"].startswith("./"), (
                    path
                )
        else:
            assert doc["runs"]["using"] == "composite" and doc["runs"]["steps"], path


def test_every_remote_action_is_pinned_by_commit():
    uses = [
        step["uses"]
        for path in TEMPLATE.joinpath(".github").rglob("*.yml")
        for step in (steps(load(path)) if path.parent == WORKFLOWS else load(path)["runs"]["steps"])
        if "uses" in step
    ]
    remote = [u for u in uses if not u.startswith("./")]
    assert remote
    assert [u for u in remote if not PINNED.match(u)] == []


def test_the_pull_request_check_validates_and_writes_the_rollout_preview_to_the_summary():
    workflow = load(WORKFLOWS / "check.yml")
    assert set(triggers(workflow)) == {"pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    script = scripts(workflow)
    assert "reconciler validate ." in script
    assert "reconciler plan . --inventory devices/inventory.yaml" in script
    assert "$GITHUB_STEP_SUMMARY" in script
    checkout = steps(workflow)[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["fetch-depth"] == 0  # plan reads the last release's source commit


def test_the_release_runs_on_main_and_weekly_signs_with_the_workflow_identity_and_commits():
    workflow = load(WORKFLOWS / "release.yml")
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    # The release commit touches only the release files: it must not start the workflow again;
    # a merged .fleet/rollout.yaml must (a pause counts only once signed).
    assert on["push"]["paths-ignore"] == [
        ".fleet/release.json",
        ".fleet/release.json.sigstore.json",
    ]
    assert "workflow_call" in on  # rollout-gate.yml signs through it, as release.yml
    assert len(on["schedule"]) == 1
    *_, day, month, weekday = on["schedule"][0]["cron"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit()  # one day a week
    assert workflow["permissions"]["id-token"] == "write"
    (job,) = workflow["jobs"].values()
    assert job["env"]["IDENTITY"] == DEVICE_IDENTITY
    assert job["env"]["ISSUER"] == GITHUB_ISSUER
    script = scripts(workflow)
    assert 'reconciler release . --identity "$IDENTITY" --issuer "$ISSUER"' in script
    assert "--no-sign" not in script and "--lab-ca" not in script
    assert "reconciler verify ." in script
    assert "git add .fleet/" in script
    assert "git push origin HEAD:main" in script
    # The published tree (SPEC 2.4), verified again by `publish`, on the gh-pages branch.
    assert 'reconciler publish . "$site" --config "$RUNNER_TEMP/device.yaml"' in script
    assert 'git -C "$site" push origin HEAD:gh-pages' in script


def test_the_pull_request_check_lets_rollout_yaml_change_but_not_the_release_files():
    script = scripts(load(WORKFLOWS / "check.yml"))
    assert "git diff --name-only HEAD^1 HEAD -- .fleet/ ':!.fleet/rollout.yaml'" in script


def test_the_rollout_gate_runs_on_a_schedule_reports_gates_and_signs_through_release_yml():
    workflow = load(WORKFLOWS / "rollout-gate.yml")
    on = triggers(workflow)
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert workflow["permissions"] == {"contents": "read"}
    gate, release = workflow["jobs"]["gate"], workflow["jobs"]["release"]
    assert gate["permissions"] == {"contents": "write", "statuses": "write"}
    assert gate["if"] == "github.ref == 'refs/heads/main'"
    assert gate["outputs"]["changed"] == "${{ steps.gate.outputs.changed }}"
    assert gate["env"]["PROMETHEUS_URL"] == "${{ secrets.PROMETHEUS_URL || vars.PROMETHEUS_URL }}"
    script = scripts(workflow)
    assert "reconciler fleet-status . --prometheus" in script
    assert "--format markdown --max-failures" in script and '>> "$GITHUB_STEP_SUMMARY"' in script
    assert 'gh api "repos/$GITHUB_REPOSITORY/statuses/$release_commit"' in script
    assert "reconciler rollout gate . --prometheus" in script
    assert 'echo "changed=true" >> "$GITHUB_OUTPUT"' in script
    assert "git add .fleet/rollout.yaml" in script and "git push origin HEAD:main" in script
    steps_by_name = {step.get("name"): step for step in gate["steps"]}
    assert steps_by_name["Canary gate"]["id"] == "gate"
    assert (
        steps_by_name["Commit .fleet/rollout.yaml"]["if"] == "steps.gate.outputs.changed == 'true'"
    )
    # Signing happens in release.yml, called: the certificate then names the identity devices pin.
    assert release["uses"] == "./.github/workflows/release.yml"
    assert release["needs"] == "gate"
    assert release["if"] == "needs.gate.outputs.changed == 'true'"
    assert release["permissions"] == {"contents": "write", "id-token": "write"}
    assert release["secrets"] == "inherit"
    assert "reconciler release" not in script  # never signed as rollout-gate.yml


def test_the_readme_names_the_identity_and_issuer_the_release_workflow_signs_as():
    readme = (TEMPLATE / "README.md").read_text(encoding="utf-8")
    written = DEVICE_IDENTITY.replace("${{ github.repository }}", "ORG/REPO")
    assert f"`{written}`" in readme
    assert f"`{GITHUB_ISSUER}`" in readme
    assert "id-token: write" in readme


def test_the_setup_action_refuses_to_install_from_the_placeholder():
    action = load(SETUP_ACTION)
    default = action["inputs"]["package"]["default"]
    first = action["runs"]["steps"][0]
    assert "YOUR-ORG" in default and "*YOUR-ORG*" in first["run"] and "exit 1" in first["run"]


def test_validate_accepts_the_template(run_cli: Callable[..., Run]):
    run = run_cli("validate", str(TEMPLATE))
    assert run.code == 0, run.out + run.err
    assert run.out.strip() == "validate: 1 app manifest(s) valid"


def test_plan_previews_the_example_app_for_the_kiosks_of_the_inventory(
    run_cli: Callable[..., Run],
):
    run = run_cli(
        "plan", str(TEMPLATE), "--inventory", str(TEMPLATE / "devices" / "inventory.yaml")
    )
    assert run.code == 0, run.out + run.err
    assert "plan: 4 device(s), 3 with changes" in run.out
    kiosks = re.findall(r"^device (kiosk-\S+):", run.out, flags=re.MULTILINE)
    assert kiosks == ["kiosk-berlin-01", "kiosk-berlin-02", "kiosk-hamburg-01"]
    assert "  + web " in run.out
    assert "not selected: web" in run.out  # the gateway


def test_the_example_app_has_an_http_health_check_on_its_published_port():
    path = "apps/web/app.yaml"
    apps, problems = manifests.parse_many({path: (TEMPLATE / path).read_bytes()})
    assert problems == []
    (app,) = apps
    (container,) = app.containers
    assert container.health is not None and container.health.kind == "http"
    assert container.health.port in [p.host_port for p in container.ports]


def test_the_template_app_has_each_line_the_demo_rewrites_exactly_once():
    text = (TEMPLATE / run_demo.MANIFEST).read_text(encoding="utf-8")
    port = run_demo.TEMPLATE_PORT
    for line in (
        f"image: {run_demo.TEMPLATE_IMAGE}",
        f'ports: ["{port}:80"]',
        f"port: {port},",
    ):
        assert text.count(line) == 1, line
