"""`reconciler_source_requests_total{result}` (SPEC 3.4): one count per head query of the fleet
source, judged by the device against the head it last fetched, whatever the source kind (the
FleetSimulator stands in for Git and the static tree alike: both answer `head()`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.device.cycle import Reconciler
from reconciler.device.metrics import Metrics
from tests.fakes import FakeVerifier
from tests.unit.test_cycle import V1, V2, Device, make_device, web


def requests(device: Device) -> dict[str, float]:
    return {
        result: device.metric("reconciler_source_requests_total", result=result)
        for result in Metrics.SOURCE_REQUEST_RESULTS
    }


def test_each_head_query_counts_once_as_changed_not_modified_or_error(tmp_path: Path):
    device = make_device(tmp_path, metrics=True)
    assert requests(device) == {"not_modified": 0, "changed": 0, "error": 0}

    device.fleet.release({"web": web(V1)})
    device.cycle()
    device.cycle()
    assert requests(device) == {"not_modified": 1, "changed": 1, "error": 0}

    device.fleet.fail_remote()
    assert device.cycle().result == "failed"
    assert requests(device) == {"not_modified": 1, "changed": 1, "error": 1}

    device.fleet.heal()  # the same head again: nothing new to fetch
    device.cycle()
    device.fleet.release({"web": web(V2)})
    device.cycle()
    assert requests(device) == {"not_modified": 2, "changed": 2, "error": 1}
    assert device.running() == {"web": V2}


def test_a_mirror_answering_for_a_primary_that_is_down_is_one_request(tmp_path: Path):
    device = make_device(tmp_path, remotes=("primary", "mirror"), metrics=True)
    device.fleet.release({"web": web(V1)})
    device.fleet.fail_remote("primary")

    device.cycle()

    assert requests(device) == {"not_modified": 0, "changed": 1, "error": 0}
    assert device.metric("reconciler_fetch_errors_total", remote="primary") == 1


def test_a_restarted_device_counts_the_head_it_already_fetched_as_not_modified(tmp_path: Path):
    device = make_device(tmp_path, metrics=True)
    device.fleet.release({"web": web(V1)})
    device.cycle()
    metrics = Metrics(remotes=("origin",))
    restarted = Reconciler(
        settings=device.reconciler.settings,
        labels=device.reconciler.labels,
        git=device.fleet,
        engine=device.engine,
        store=device.store,
        metrics=metrics,
        verifier=FakeVerifier(accept=False, reason="unsigned"),
        clock=device.clock,
    )

    restarted.cycle(now=device.clock.now())

    sample = metrics.registry.get_sample_value
    assert sample("reconciler_source_requests_total", {"result": "not_modified"}) == 1
    assert sample("reconciler_source_requests_total", {"result": "changed"}) == 0


def test_a_result_outside_the_three_is_refused_rather_than_made_a_new_series():
    with pytest.raises(ValueError, match="not one of those counted"):
        Metrics().record_source_request("timeout")
