"""status: the document `reconciler status --json` prints and the lines a person reads."""

from __future__ import annotations

from dataclasses import replace

from reconciler import model
from reconciler.core import state, status

REV = "a" * 64
OLD = "b" * 64


def observed(app: str, container: str, status_: str = "running", restarts: int = 0):
    return model.ObservedContainer(
        id="c" * 64,
        name=f"reconciler_{app}_{container}",
        app=app,
        container=container,
        revision=REV,
        namespace="",
        spec_digest="d" * 64,
        image="127.0.0.1:5000/gw:1",
        status=status_,
        restart_count=restarts,
    )


SAVED = state.DeviceState(
    release_version=7,
    commit="1234567890abcdef" * 2 + "12345678",
    applied_at="2026-12-03T07:00:00Z",
    apps=(state.AppliedApp("gw", "apps/gw/app.yaml", REV, (("web", "127.0.0.1:5000/gw:1"),)),),
    held_back=(state.HeldBack("api", OLD, "image exits at once", 7, "2026-12-03T06:00:00Z"),),
    last_fetch="2026-12-03T07:05:00Z",
    last_fetch_commit="1234567890abcdef" * 2 + "12345678",
)


def test_the_report_joins_saved_apps_with_their_observed_containers():
    doc = status.report(
        SAVED,
        device="gw-01",
        state_dir="/var/lib/reconciler",
        observed=[observed("gw", "web", restarts=2), observed("old", "db", "exited")],
        volumes=["gw-data"],
    )
    assert doc["release_version"] == 7
    (app,) = doc["apps"]
    assert app["name"] == "gw" and app["revision"] == REV
    assert app["containers"][0]["state"] == "running"
    assert app["containers"][0]["restart_count"] == 2
    assert doc["other_containers"] == [{"app": "old", "name": "db", "state": "exited"}]
    assert doc["held_back"][0]["reason"] == "image exits at once"
    assert doc["volumes"] == ["gw-data"]


def test_the_text_names_release_apps_containers_held_back_revisions_and_volumes():
    doc = status.report(
        SAVED, device="gw-01", state_dir="/s", observed=[observed("gw", "web")], volumes=["v1"]
    )
    text = "\n".join(status.render(doc))
    assert "release 7 at commit 1234567890ab" in text
    assert "last fetch: 2026-12-03T07:05:00Z" in text
    assert "last error: none" in text
    assert "gw  revision aaaaaaaaaaaa" in text
    assert "web" in text and "running" in text
    assert "api revision bbbbbbbbbbbb" in text and "image exits at once" in text
    assert "volumes" in text and "v1" in text


def test_with_the_engine_down_the_saved_state_is_still_shown_and_the_reason_given():
    doc = status.report(
        SAVED,
        device="gw-01",
        state_dir="/s",
        observed=None,
        volumes=None,
        engine_error="connection refused",
    )
    text = "\n".join(status.render(doc))
    assert "engine: not reachable, containers unknown: connection refused" in text
    assert "gw  revision" in text


def test_a_fresh_device_says_nothing_was_applied_yet():
    doc = status.report(state.DeviceState(), device="d", state_dir="/s", observed=[], volumes=[])
    lines = status.render(doc)
    assert "release: none applied yet" in lines
    assert "last fetch: never" in lines
    assert "apps: none" in lines


def test_an_interrupted_change_is_shown():
    pending = state.Transaction((), SAVED.apps, 8, "f" * 40, "2026-12-03T07:10:00Z")
    doc = status.report(
        state.DeviceState(pending=pending), device="d", state_dir="/s", observed=[], volumes=[]
    )
    assert any("interrupted change to release 8" in line for line in status.render(doc))


def test_a_state_dir_that_cannot_be_written_is_the_last_error_and_names_the_path():
    problem = "state_dir /s is full (0 bytes free): state.json cannot be written"
    saved = replace(SAVED, last_error="fetch failed")
    doc = status.report(
        saved, device="d", state_dir="/s", observed=[], volumes=[], state_dir_error=problem
    )
    assert doc["state_dir_error"] == problem
    assert doc["last_error"] == f"{problem}; saved before it: fetch failed"
    assert f"last error: {problem}; saved before it: fetch failed" in status.render(doc)


def test_the_last_fetch_comes_from_the_running_daemon_when_it_answers():
    doc = status.report(
        SAVED,
        device="d",
        state_dir="/s",
        observed=[],
        volumes=[],
        fetched_by_daemon="2026-12-03T09:00:00Z",
    )
    assert doc["last_fetch"] == "2026-12-03T09:00:00Z"
    assert doc["last_fetch_source"] == "daemon"
    text = "\n".join(status.render(doc))
    assert "last fetch: 2026-12-03T09:00:00Z (head 1234567890ab, from the running daemon)" in text


def test_without_a_daemon_the_last_fetch_says_it_is_when_the_head_last_moved():
    doc = status.report(SAVED, device="d", state_dir="/s", observed=[], volumes=[])
    assert doc["last_fetch_source"] == "state_dir"
    text = "\n".join(status.render(doc))
    assert "last fetch: 2026-12-03T07:05:00Z (head 1234567890ab; when the head last moved" in text


def test_a_config_that_became_invalid_is_shown_with_the_previous_settings_kept():
    doc = status.report(
        SAVED,
        device="d",
        state_dir="/s",
        observed=[],
        volumes=[],
        config_error="/etc/reconciler/labels.d/x.yaml: not valid YAML",
    )
    assert any(
        line.startswith("config: invalid now, a running daemon keeps its previous settings")
        and "labels.d/x.yaml" in line
        for line in status.render(doc)
    )
