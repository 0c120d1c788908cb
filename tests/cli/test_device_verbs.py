"""Device verbs before any engine is involved: bad configs exit 2, status works offline."""

from __future__ import annotations

from pathlib import Path

import pytest

GOOD = "source:\n  url: /srv/fleet\ntrust:\n  allow_unsigned: true\nstate_dir: {state}\n"


@pytest.mark.parametrize("verb", ["once", "run", "status", "sync"])
def test_a_bad_config_exits_2_naming_the_key_and_the_reason(verb, run_cli, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text("source:\n  url: /srv/fleet\n  poll_interval: soon\n")

    result = run_cli(verb, "--config", str(config))

    assert result.code == 2
    assert "bad config, nothing was done" in result.err
    assert 'source.poll_interval: expected a duration like 60s, got "soon"' in result.err
    assert "trust.identities" in result.err  # every problem, not just the first


def test_a_missing_config_exits_2_naming_the_file(run_cli, tmp_path: Path):
    result = run_cli("once", "--config", str(tmp_path / "nope.yaml"))
    assert result.code == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read the config" in result.err


def test_the_config_path_comes_from_the_environment_when_not_given(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("RECONCILER_CONFIG", str(tmp_path / "from-env.yaml"))
    result = run_cli("status")
    assert result.code == 2
    assert "from-env.yaml" in result.err


def test_status_without_an_engine_shows_the_saved_state_and_why(run_cli, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(
        GOOD.format(state=tmp_path / "state")
        + f"runtime:\n  docker_host: unix://{tmp_path / 'no-engine.sock'}\n"
    )
    result = run_cli("status", "--config", str(config))
    assert result.code == 0
    assert "release: none applied yet" in result.out
    assert "engine: not reachable" in result.out


def test_sync_without_a_running_daemon_exits_1(run_cli, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(GOOD.format(state=tmp_path / "state"))
    result = run_cli("sync", "--config", str(config))
    assert result.code == 1
    assert "no daemon is running" in result.err


@pytest.mark.parametrize("verb", ["run", "once", "status", "sync"])
def test_every_device_verb_has_help_with_an_example(verb, run_cli):
    result = run_cli(verb, "--help")
    assert result.code == 0
    assert "example:" in result.out and "--config" in result.out
