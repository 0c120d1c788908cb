"""status: the document `reconciler status --json` prints and the lines a person reads."""

from __future__ import annotations

from reconciler import model, state, status

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
