"""Per-app previous revisions (`DeviceState.app_previous`), where an abort returns an app."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.core import transitions
from reconciler.core.state import AppliedApp, DeviceState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
R1, R2, R3, D1, D2 = "1" * 64, "2" * 64, "3" * 64, "d" * 64, "e" * 64


def app(name: str, revision: str) -> AppliedApp:
    return AppliedApp(name, f"apps/{name}/app.yaml", revision)


def commit(current: DeviceState, *apps: AppliedApp) -> DeviceState:
    return transitions.committed(current, DeviceState(apps=tuple(apps)), NOW)


def history(state: DeviceState) -> dict[str, str]:
    return {a.name: a.revision for a in state.app_previous}


def test_each_app_remembers_the_revision_it_left_whatever_other_apps_do_later():
    s = commit(DeviceState(), app("web", R1), app("db", D1))
    assert history(s) == {}  # new apps have no history
    s = commit(s, app("web", R2), app("db", D1))
    assert history(s) == {"web": R1}
    s = commit(s, app("web", R2), app("db", D2))
    # The whole previous state now has web on R2; web's own previous is still R1.
    assert [a.revision for a in s.previous_apps if a.name == "web"] == [R2]
    assert history(s) == {"web": R1, "db": D1}
    assert transitions.kept_revisions(s) >= {R1, R2, D1, D2}


def test_a_return_to_the_previous_revision_uses_it_up():
    s = commit(DeviceState(), app("web", R1))
    s = commit(s, app("web", R2))
    s = commit(s, app("web", R1))  # an abort of R2 (or a rollback by hand)
    assert history(s) == {}  # never back to the aborted R2 by a later abort


def test_moving_on_replaces_the_history_and_a_removed_app_loses_it():
    s = commit(DeviceState(), app("web", R1), app("db", D1))
    s = commit(s, app("web", R2), app("db", D1))
    s = commit(s, app("web", R3), app("db", D1))
    assert history(s) == {"web": R2}
    s = commit(s, app("db", D1))
    assert history(s) == {}
