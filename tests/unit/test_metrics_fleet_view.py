"""The metrics `fleet-status` reads (SPEC 3.4): reconciler_device_info, reconciler_app_info,
reconciler_hold, reconciler_in_maintenance_window, checked in the rendered exposition."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.device.metrics import APP_INFO_STATES, Metrics
from tests.unit.test_cycle import V1, make_device, revision, web

R1, R2 = "1" * 64, "2" * 64


def series(metrics: Metrics, name: str) -> list[str]:
    """The sample lines of `name` in the text exposition (comments left out)."""
    return [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def test_the_gauges_start_with_no_hold_inside_a_window_and_no_apps():
    metrics = Metrics()
    assert series(metrics, "reconciler_hold") == ["reconciler_hold 0.0"]
    assert series(metrics, "reconciler_in_maintenance_window") == [
        "reconciler_in_maintenance_window 1.0"
    ]
    assert series(metrics, "reconciler_app_info") == []
    assert series(metrics, "reconciler_device_info") == []


def test_device_info_names_the_device_once_and_follows_a_rename():
    metrics = Metrics()
    metrics.set_device("gw-01")
    metrics.set_device("gw-01")
    assert series(metrics, "reconciler_device_info") == [
        'reconciler_device_info{device="gw-01"} 1.0'
    ]
    metrics.set_device("gw-02")
    assert series(metrics, "reconciler_device_info") == [
        'reconciler_device_info{device="gw-02"} 1.0'
    ]


def test_app_info_keeps_one_series_per_app_and_drops_the_old_label_sets():
    metrics = Metrics()
    metrics.set_app_info({"web": (R1, "running"), "db": (R1, "running")})
    metrics.set_app_info({"web": (R2, "pending"), "db": (R1, "running")})
    assert sorted(series(metrics, "reconciler_app_info")) == [
        f'reconciler_app_info{{app="db",revision="{R1}",state="running"}} 1.0',
        f'reconciler_app_info{{app="web",revision="{R2}",state="pending"}} 1.0',
    ]
    metrics.set_app_info({"web": (R2, "running")})  # db left the device
    assert series(metrics, "reconciler_app_info") == [
        f'reconciler_app_info{{app="web",revision="{R2}",state="running"}} 1.0'
    ]


def test_app_info_takes_only_the_spec_states():
    assert APP_INFO_STATES == ("running", "pending", "paused", "held_back", "failed")
    with pytest.raises(ValueError, match="not one of"):
        Metrics().set_app_info({"web": (R1, "waiting")})


def test_hold_and_window_are_0_or_1():
    metrics = Metrics()
    metrics.set_hold(True)
    metrics.set_in_maintenance_window(False)
    assert series(metrics, "reconciler_hold") == ["reconciler_hold 1.0"]
    assert series(metrics, "reconciler_in_maintenance_window") == [
        "reconciler_in_maintenance_window 0.0"
    ]


def test_a_cycle_reports_the_device_and_each_apps_revision_and_state(tmp_path: Path):
    device = make_device(tmp_path, metrics=True)
    device.fleet.release({"web": web(V1)})
    device.cycle()
    assert device.metrics is not None
    assert series(device.metrics, "reconciler_device_info") == [
        'reconciler_device_info{device="dev-01"} 1.0'
    ]
    assert series(device.metrics, "reconciler_app_info") == [
        f'reconciler_app_info{{app="web",revision="{revision(web(V1))}",state="running"}} 1.0'
    ]


def test_a_revision_rolled_back_here_is_held_back_and_a_forbidden_one_failed(tmp_path: Path):
    from tests.fakes import UNHEALTHY
    from tests.unit.test_cycle import V2

    device = make_device(
        tmp_path, metrics=True, extra_config="policy: {allowed_registries: [registry.example/]}\n"
    )
    device.fleet.release({"web": web(V1)})
    device.cycle()
    checked = web(V2, health={"docker": True, "failure_threshold": 1})
    device.fleet.release({"web": checked})
    device.engine.behave(V2, UNHEALTHY)
    assert device.cycle().result == "rolled_back"
    assert device.metrics is not None
    assert series(device.metrics, "reconciler_app_info") == [
        f'reconciler_app_info{{app="web",revision="{revision(checked)}",state="held_back"}} 1.0'
    ]

    forbidden = web("elsewhere.example/web:1")
    device.fleet.release({"web": forbidden})
    device.cycle()
    assert series(device.metrics, "reconciler_app_info") == [
        f'reconciler_app_info{{app="web",revision="{revision(forbidden)}",state="failed"}} 1.0'
    ]
