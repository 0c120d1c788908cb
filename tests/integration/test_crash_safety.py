"""Crash safety (SPEC 3.2): `reconciler once` killed with SIGKILL at 50+ moments spread over pull,
stop, create, start, health wait and rollback, then run again. Every time the managed containers
must equal exactly one described state (the one before or the one aimed for) and state.json must
be valid and agree with them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import docker
import pytest

from reconciler.core import state
from testkit.crash_harness import HEALTH, all_running, observed, push_images, release_step, run_once
from testkit.device_lab import DeviceLab
from testkit.images import ImageFactory
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker

KILLS = 52  # at least 50 moments
BAD_EVERY = 3  # every third change is unhealthy, so kills also land in a rollback


@pytest.fixture(scope="module")
def refs(images: ImageFactory, registry: LocalRegistry) -> dict[str, str]:
    return push_images(images, registry)


def saved_apps(lab: DeviceLab) -> tuple[tuple[str, str], ...]:
    saved = state.from_json((lab.state_dir / "state.json").read_bytes())
    assert saved.pending is None
    return tuple(sorted((a.name, a.revision) for a in saved.apps))


def test_sigkill_at_any_moment_leaves_one_described_state(
    tmp_path: Path,
    docker_host: str,
    namespace: str,
    refs: dict[str, str],
    docker_client: docker.DockerClient,
):
    lab = DeviceLab(tmp_path, docker_host=docker_host, namespace=namespace)
    lab.write_config(health=HEALTH)
    port = lab.free_port()

    def release(step: int, *, bad: bool) -> None:
        release_step(lab, refs, port=port, step=step, bad=bad)

    release(0, bad=False)
    code, _ = run_once(lab)
    assert code == 0
    before = observed(docker_client, namespace)

    # How long an uninterrupted good change and a bad one (with its rollback) take here.
    release(1, bad=False)
    code, good_seconds = run_once(lab)
    assert code == 0
    before = observed(docker_client, namespace)
    release(2, bad=True)
    code, bad_seconds = run_once(lab)
    assert code == 3
    assert observed(docker_client, namespace) == before

    # The uninterrupted length of each kind of run, shortened whenever a run outlives its kill
    # moment: machines are shared, and a span measured under load would put kills past the end.
    spans = {False: good_seconds, True: bad_seconds}
    outcomes = []
    for kill in range(KILLS):
        step = kill + 3
        bad = kill % BAD_EVERY == BAD_EVERY - 1
        release(step, bad=bad)
        span = spans[bad]
        # Spread evenly over the whole run, from process start to its last step.
        index = kill // BAD_EVERY if bad else kill - kill // BAD_EVERY
        count = KILLS // BAD_EVERY if bad else KILLS - KILLS // BAD_EVERY
        moment = span * (index + 0.5) / count
        first_code, first_seconds = run_once(lab, kill_after=moment)
        if first_code != -signal.SIGKILL:
            spans[bad] = min(spans[bad], first_seconds)
        second_code, _ = run_once(lab)  # finishes or reverts the interrupted cycle

        now = observed(docker_client, namespace)
        if bad:
            # Rolled back (by the killed run or the second one), or already reverted: the state
            # before. The second run may also find the revision held back and change nothing.
            assert now == before, (kill, moment, now, before)
            assert second_code in (0, 3), (kill, moment, second_code)
        else:
            assert second_code == 0, (kill, moment, (lab.root / "once.log").read_text())
            assert len(now) == 2 and all(c[2] != b[2] for c, b in zip(now, before, strict=True))
            assert {c[2] for c in now} == {dict(saved_apps(lab))["web"]}
        assert all_running(docker_client, namespace), (kill, moment)
        assert saved_apps(lab) == tuple(sorted({(c[0], c[2]) for c in now}))
        json.loads((lab.state_dir / "state.json").read_text())  # valid JSON, parseable state
        outcomes.append((round(moment, 2), first_code))
        before = now

    killed = [m for m, code in outcomes if code == -signal.SIGKILL]
    # Most moments fall before the end of a run; the last of each kind may race its finish.
    assert len(killed) >= 36, f"too few runs were really killed mid-way: {outcomes}"
