"""`reconciler hold` / `unhold` and what `status` shows of the hold and the windows (SPEC 3.3).

No daemon and no engine: the hold is a file in state_dir that the daemon reads each cycle, so
the verbs work the same with a daemon running or not (the daemon side: tests/unit/
test_cycle_deferrals.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

CONFIG = (
    "source:\n  url: /srv/fleet\ntrust:\n  allow_unsigned: true\nstate_dir: {state}\n"
    "runtime:\n  docker_host: unix://{sock}\n"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", sock=tmp_path / "no-engine.sock"))
    return path


def status_json(run_cli, config: Path) -> dict:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_hold_for_a_while_with_a_reason_is_kept_in_state_dir_and_shown_by_status(
    run_cli, config: Path, tmp_path: Path
):
    before = datetime.now(UTC).replace(microsecond=0)
    result = run_cli("hold", "--for", "2h", "--reason", "night shift", "--config", str(config))

    assert result.code == 0, result.err
    assert "new revisions wait on this device" in result.out
    assert "reason: night shift" in result.out
    saved = json.loads((tmp_path / "state" / "hold.json").read_text())
    assert saved["reason"] == "night shift"
    doc = status_json(run_cli, config)
    assert doc["hold"]["active"] is True and doc["hold"]["reason"] == "night shift"
    until = datetime.strptime(doc["hold"]["until"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(hours=2) <= until <= before + timedelta(hours=2, seconds=5)
    text = run_cli("status", "--config", str(config)).out
    assert "hold: new revisions wait, since" in text and ": night shift" in text


def test_unhold_ends_the_hold_and_says_when_there_was_none(run_cli, config: Path):
    assert run_cli("hold", "--config", str(config)).code == 0
    assert status_json(run_cli, config)["hold"]["until"] is None

    result = run_cli("unhold", "--config", str(config))

    assert result.code == 0
    assert "hold ended" in result.out
    assert status_json(run_cli, config)["hold"] is None
    again = run_cli("unhold", "--config", str(config))
    assert (again.code, again.out.strip()) == (0, "unhold: no hold was set")


def test_a_bad_duration_exits_2_and_sets_no_hold(run_cli, config: Path, tmp_path: Path):
    result = run_cli("hold", "--for", "soon", "--config", str(config))
    assert result.code == 2
    assert 'hold: --for: expected a duration like 60s, got "soon"' in result.err
    assert not (tmp_path / "state" / "hold.json").exists()


def test_a_damaged_hold_file_is_shown_as_holding_and_unhold_clears_it(
    run_cli, config: Path, tmp_path: Path
):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "hold.json").write_text("{half a")

    doc = status_json(run_cli, config)
    text = run_cli("status", "--config", str(config)).out

    assert doc["hold"]["active"] is True and "not valid JSON" in doc["hold"]["error"]
    assert "hold: the hold file is damaged, so new revisions wait" in text
    assert run_cli("unhold", "--config", str(config)).code == 0
    assert status_json(run_cli, config)["hold"] is None


def test_status_shows_the_windows_whether_inside_and_when_they_open(run_cli, config: Path):
    config.write_text(
        config.read_text()
        + 'maintenance:\n  windows: ["Mon-Sun 00:00-24:00"]\n  timezone: Europe/Berlin\n'
    )
    doc = status_json(run_cli, config)
    assert doc["maintenance"]["in_window"] is True
    assert doc["maintenance"]["timezone"] == "Europe/Berlin"
    text = run_cli("status", "--config", str(config)).out
    assert "maintenance windows: Mon-Sun 00:00-24:00 (Europe/Berlin): now inside" in text
    assert doc["pending_revisions"] == []


def test_a_bad_window_in_the_config_exits_2_naming_the_key(run_cli, config: Path):
    config.write_text(config.read_text() + 'maintenance:\n  windows: ["Mon 9-5"]\n')
    result = run_cli("hold", "--config", str(config))
    assert result.code == 2
    assert "maintenance.windows[0]: expected" in result.err


@pytest.mark.parametrize("verb", ["hold", "unhold"])
def test_hold_verbs_have_help_with_an_example(verb, run_cli):
    result = run_cli(verb, "--help")
    assert result.code == 0
    assert "example:" in result.out and "--config" in result.out
