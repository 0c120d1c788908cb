"""The rollout loop end to end, with real parts only (issue 12, item 6; SPEC 2.1 waves, 2.3, 3.3,
3.4), on Docker and Podman.

Five `reconciler run` daemons share one engine (each its own runtime.namespace, state_dir and
metrics port) and one fleet repo (a local Git path polled every second), with releases signed by
a lab CA every device pins. Debian's Prometheus scrapes four of them every second; the fifth has
no metrics endpoint and pushes to a Pushgateway that Prometheus scrapes with honor_labels (a
device behind NAT). A sixth polls a copy of the repo made at v1, so it runs an older revision
than the release's newest with no reason to give. The fleet side is the console script, run as
the template's CI runs it.

The story, one release per step:
1. `web` v1 runs everywhere; one canary sets a local hold.
2. v2, whose health check gets a 404, with waves 40% now and 100% a day later. The canaries
   (bucket < 40: the device names are picked by computing buckets) take it, roll back and hold
   it back, except the held one, where it waits on the hold; the others wait for their wave.
   fleet-status counts each state and exits 4 over --max-failures.
3. `rollout gate` pauses `web` (exit 10) and the release carries the pause: every device not
   holding v2 back reports it paused.
4. The next wave opens (the release's `since` a day back, as if the day had passed): nobody
   takes v2, every container still carries v1's revision label.
5. Resumed with v3, a good revision nobody wants after all: the canaries without a hold take it.
   The abort release, with the registry stopped, sends them back to v1 (kept locally) holding
   v3 back; the others never take it.
6. A device that stops is stale in fleet-status, not forgotten: shown in its last state.

Every wait is on a condition (Prometheus' view, the engine's labels), never a fixed sleep. The
devices are named after the test's namespace and fleet-status must show no device but these:
anything else reaching this Prometheus (as every earlier test's pushed devices once did, from
Debian's Pushgateway persistence file) fails the test. The last two tests cover the kit's
Pushgateway: it starts empty, and a second one on a held port is refused, not taken for ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from reconciler import model
from reconciler.core import release, rollout
from reconciler.fleet import lab_ca
from testkit import waiting
from testkit.cli import Run, run_console_script
from testkit.device_lab import DeviceLab, LabSigner, app_manifest, managed, remove_namespace
from testkit.fleet_repos import FleetRepo
from testkit.images import ImageFactory
from testkit.prometheus import Prometheus, PrometheusUnavailable, Pushgateway
from testkit.registry import LocalRegistry

pytestmark = pytest.mark.docker

APP = "web"
PATH = f"apps/{APP}/app.yaml"
CANARY_PERCENT = 40
WAVES = [{"percent": CANARY_PERCENT}, {"percent": 100, "after": "1d"}]
INVENTORY = "devices/inventory.yaml"
# Generous: five daemons, an engine and Prometheus share a CI machine with other workers.
WAIT = 180.0


def eventually(check: Callable[[], object], what: str, *, show: Callable[[], str] = str) -> None:
    waiting.eventually(check, what, WAIT, 0.5, show=show)


def pick_devices(prefix: str) -> tuple[list[str], list[str]]:
    """Three canaries of `web` (bucket below the first wave's percent) and two devices past it,
    named `prefix-NN`: names no other test's devices have, should any reach this Prometheus."""
    canaries: list[str] = []
    others: list[str] = []
    for n in range(1, 100):
        name = f"{prefix}-{n:02d}"
        (canaries if rollout.bucket(name, APP) < CANARY_PERCENT else others).append(name)
    return canaries[:3], others[:2]


def web_manifest(image: str, *, health_path: str, waves: bool, env: dict[str, str] | None = None):
    """`web`: busybox httpd, healthy when `health_path` answers inside the container (an exec
    check: five devices run it on one engine, so it publishes no port)."""
    container: dict[str, object] = {
        "name": "web",
        "image": image,
        "health": {
            "exec": ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:80{health_path}"],
            "interval": "1s",
            "failure_threshold": 2,
        },
        **({"env": env} if env else {}),
    }
    doc = yaml.safe_load(app_manifest(APP, [container]))
    if waves:
        doc["spec"]["rollout"] = {"waves": WAVES}
    text = yaml.safe_dump(doc, sort_keys=False)
    return text, hashlib.sha256(text.encode()).hexdigest()


class Fleet:
    """The fleet repo checkout CI works in; `release` signs with the lab CA devices pin."""

    def __init__(self, root: Path, signer: LabSigner) -> None:
        self.repo = FleetRepo(root)
        self.signer = signer

    def cli(self, *args: str) -> Run:
        return run_console_script(*args, cwd=self.repo.root)

    def release(self, message: str) -> int:
        """Commit the work tree, make and sign a release as CI does, commit it; its version."""
        self.repo.commit(message)
        signer = self.signer
        made = self.cli(
            "release",
            *("--lab-ca", str(signer.ca), "--identity", signer.identity, "--issuer", signer.issuer),
        )
        assert made.code == 0, made.err
        self.repo.commit(f"release: {message}")
        return self.current().version

    def current(self) -> release.Release:
        return release.parse(self.repo.read(release.RELEASE_PATH))

    def release_later(self, by: timedelta, message: str) -> int:
        """The next release as devices see it once `by` has passed since `web`'s revision was
        first released: its `since` moved back by `by`, signed again. Waves open as in time."""
        self.release(message)
        current = self.current()
        apps = tuple(
            (path, dataclasses.replace(pin, since=pin.since - by) if path == PATH else pin)
            for path, pin in current.apps
        )
        data = release.serialize(dataclasses.replace(current, apps=apps))
        signer = self.signer
        bundle = lab_ca.sign(signer.ca, data, identity=signer.identity, issuer=signer.issuer)
        (self.repo.root / release.RELEASE_PATH).write_bytes(data)
        (self.repo.root / release.BUNDLE_PATH).write_bytes(bundle)
        self.repo.commit(f"release: {message}, {by} later")
        return current.version


@dataclasses.dataclass
class Loop:
    """The fleet, its devices (running daemons) and the Prometheus that watches them."""

    fleet: Fleet
    prometheus: Prometheus
    devices: list[DeviceLab]
    canaries: list[str]  # the last one sets a local hold
    others: list[str]  # the last one pushes to the Pushgateway
    engine: docker.DockerClient
    registry: LocalRegistry
    image: str
    spare: str  # in the inventory, never started
    lagger: DeviceLab  # polls a copy of the fleet repo frozen at v1: runs an older revision

    @property
    def held_canary(self) -> str:
        return self.canaries[-1]

    def device(self, name: str) -> DeviceLab:
        return next(d for d in self.devices if d.device_name == name)

    def by_device(self, promql: str) -> dict[str, dict[str, Any]]:
        """This loop's devices' series of `promql`: a scraped series is the device's whose
        device_info shares its job and instance, a pushed one names its device."""
        names = {
            (s["metric"].get("job"), s["metric"].get("instance")): s["metric"]["device"]
            for s in self.prometheus.query("reconciler_device_info")
        }
        mine = {d.device_name for d in self.devices}
        found = {}
        for series in self.prometheus.query(promql):
            labels = series["metric"]
            key = (labels.get("job"), labels.get("instance"))
            device = labels.get("device") or names.get(key)
            if device in mine:
                found[device] = series
        return found

    def app_states(self) -> dict[str, tuple[str, str]]:
        """device -> (revision, state) of `web` as Prometheus has it now (one series per app)."""
        found = self.by_device(f'reconciler_app_info{{app="{APP}"}} == 1')
        return {d: (s["metric"]["revision"], s["metric"]["state"]) for d, s in found.items()}

    def wait_for_states(self, expected: dict[str, tuple[str, str]], what: str) -> None:
        eventually(lambda: self.app_states() == expected, f"{what}: {expected}", show=self.seen)

    def seen(self) -> str:
        """What Prometheus and the daemons' last log lines say, for a failed wait."""
        logs = "\n".join(
            f"{d.device_name}: " + " | ".join(d.daemon_log.read_text().splitlines()[-3:])
            for d in self.devices
        )
        return f"Prometheus has {self.app_states()}\n{logs}"

    def release_versions(self) -> dict[str, int]:
        found = self.by_device("reconciler_release_version")
        return {d: int(float(s["value"][1])) for d, s in found.items()}

    def engine_revisions(self) -> dict[str, set[str]]:
        """device -> the reconciler.revision labels of its containers in the engine."""
        return {
            d.device_name: {
                c.labels[model.LABEL_REVISION] for c in managed(self.engine, d.namespace)
            }
            for d in self.devices
        }

    def fleet_status(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """`fleet-status --json` with the inventory: (exit code, web's entry)."""
        args = ("--prometheus", self.prometheus.url, "--inventory", INVENTORY, "--json", *extra)
        run = self.fleet.cli("fleet-status", *args)
        assert run.code in (0, 4), run.err
        (app,) = [a for a in json.loads(run.out)["apps"] if a["name"] == APP]
        mine = {d.device_name for d in self.devices} | {self.spare, self.lagger.device_name}
        strangers = [row for row in app["devices"] if row["device"] not in mine]
        assert not strangers, (strangers, self.prometheus.query("up"))
        return run.code, app


@pytest.fixture(scope="module")
def page(images: ImageFactory, registry: LocalRegistry) -> str:
    registry.push(images.httpd("rollout-loop-web", "rollout loop"), "rl/web:1")
    return f"{registry.address}/rl/web:1"


@pytest.fixture
def loop(
    tmp_path: Path,
    docker_host: str,
    docker_client: docker.DockerClient,
    namespace: str,
    page: str,
    registry: LocalRegistry,
    daemons: list,
) -> Iterator[Loop]:
    canaries, others = pick_devices(namespace)
    lab_ca.init(tmp_path / "lab-ca")
    signer = LabSigner(tmp_path / "lab-ca")
    fleet = Fleet(tmp_path / "fleet", signer)
    spare = f"{namespace}-spare"  # in the inventory, never started: never seen
    lagging = f"{namespace}-lag"  # polls a copy of the repo made at v1: never sees v2
    listed = [{"name": n, "labels": {}} for n in [*canaries, *others, spare, lagging]]
    fleet.repo.write(INVENTORY, yaml.safe_dump({"devices": listed}))
    try:
        gateway = Pushgateway(tmp_path / "pushgateway").__enter__()
    except PrometheusUnavailable as exc:
        pytest.skip(str(exc))
    devices: list[DeviceLab] = []
    lagger: DeviceLab | None = None
    prometheus = None
    try:
        for name in [*canaries, *others]:
            lab = DeviceLab(
                tmp_path / name,
                docker_host=docker_host,
                namespace=name,
                device_name=name,
                source_url=str(fleet.repo.root),
                signer=signer,
            )
            pushes = name == others[-1]
            lab.metrics_listen = "" if pushes else f"127.0.0.1:{lab.free_port()}"
            lab.write_config(
                source={"url": str(fleet.repo.root), "poll_interval": "1s", "jitter": 0.2},
                metrics={
                    "listen": lab.metrics_listen,
                    "pushgateway": gateway.url if pushes else "",
                },
            )
            devices.append(lab)
        lagger = DeviceLab(
            tmp_path / lagging,
            docker_host=docker_host,
            namespace=lagging,
            device_name=lagging,
            source_url=str(tmp_path / "frozen"),
            signer=signer,
        )
        lagger.metrics_listen = f"127.0.0.1:{lagger.free_port()}"
        lagger.write_config(
            source={"url": str(tmp_path / "frozen"), "poll_interval": "1s", "jitter": 0.2},
            metrics={"listen": lagger.metrics_listen, "pushgateway": ""},
        )
        scraped = [d.metrics_listen for d in devices[:-1]] + [lagger.metrics_listen]
        jobs = [
            {"job_name": "devices", "targets": scraped},
            {"job_name": "pushgateway", "targets": [gateway.target], "honor_labels": True},
        ]
        try:
            prometheus = Prometheus(tmp_path / "prometheus", jobs).__enter__()
        except PrometheusUnavailable as exc:
            pytest.skip(str(exc))
        yield Loop(
            fleet,
            prometheus,
            devices,
            canaries,
            others,
            docker_client,
            registry,
            page,
            spare,
            lagger,
        )
    finally:
        for process in daemons:  # before their containers go, or they would put them back
            process.terminate()
        for process in daemons:
            process.wait(timeout=60)
        for lab in [*devices, *([lagger] if lagger else [])]:
            remove_namespace(docker_client, lab.namespace)
        if prometheus is not None:
            prometheus.stop()
        gateway.stop()


def test_a_bad_revision_fails_on_the_canaries_the_gate_pauses_it_and_an_abort_returns_them(
    loop: Loop, daemons: list
):
    started = time.monotonic()

    def step(name: str) -> None:  # shown with the failure: how far it got, and how fast
        print(f"{time.monotonic() - started:6.1f} s: {name}")

    fleet, canaries, others, held = loop.fleet, loop.canaries, loop.others, loop.held_canary
    every = [d.device_name for d in loop.devices]

    # --- 1. v1 everywhere; one canary holds new revisions ----------------------------------
    v1_text, v1 = web_manifest(loop.image, health_path="/index.html", waves=False)
    fleet.repo.write(PATH, v1_text)
    fleet.release("web v1")
    shutil.copytree(fleet.repo.root, loop.lagger.source_url, symlinks=True)
    daemons += [lab.start_daemon() for lab in [*loop.devices, loop.lagger]]
    loop.wait_for_states(dict.fromkeys(every, (v1, "running")), "v1 running everywhere")
    lagging = loop.lagger.device_name
    eventually(
        lambda: loop.fleet_status()[1]["counts"]["applied"] == len(every) + 1,
        f"v1 running on {lagging} too",
        show=loop.seen,
    )
    hold = loop.device(held).cli("hold", "--reason", "opening hours")
    assert hold.code == 0, hold.err
    eventually(
        lambda: list(loop.by_device("reconciler_hold == 1")) == [held],
        "the hold reported",
        show=loop.seen,
    )

    step("v1 everywhere")
    # --- 2. the bad v2: canaries roll back and hold it back ----------------------------------
    v2_text, v2 = web_manifest(loop.image, health_path="/healthz", waves=True)
    fleet.repo.write(PATH, v2_text)
    fleet.release("web v2")
    loop.wait_for_states(
        {
            canaries[0]: (v2, "held_back"),
            canaries[1]: (v2, "held_back"),
            held: (v2, "pending"),
            others[0]: (v2, "pending"),
            others[1]: (v2, "pending"),
        },
        "v2 rolled back on the canaries",
    )
    assert loop.engine_revisions() == {d: {v1} for d in every}

    code, web = loop.fleet_status("--max-failures", "0")
    assert code == 4
    assert web["revision"] == v2
    assert web["wave"] == "wave 1 of 2 (40%)"
    assert web["counts"] == {
        "targeted": 7,
        "applied": 0,
        "pending": 3,
        "paused": 0,
        "failed": 2,
        "older": 1,
        "missing": 0,
        "never_seen": 1,
        "stale": 0,
    }
    assert web["pending_reasons"] == {"hold": 1, "wave": 2}
    assert (web["tried"], web["failed"]) == (2, 2)
    rows = {row["device"]: row for row in web["devices"]}
    assert rows[others[1]]["state"] == "pending"  # the pushing device, through the Pushgateway
    assert rows[loop.spare]["state"] == "never_seen"
    assert rows[lagging]["state"] == "older"  # still on v1, no reason: its source never moved
    assert loop.fleet_status("--max-failures", "2")[0] == 0

    step("v2 rolled back")
    # --- 3. the gate pauses web; the release carries the pause -------------------------------
    gate = fleet.cli("rollout", "gate", "--prometheus", loop.prometheus.url, "--max-failures", "1")
    assert gate.code == 10, gate.out + gate.err
    assert f"  {APP}: {{paused: true}}\n" in fleet.repo.read(".fleet/rollout.yaml").decode()
    fleet.release("rollout gate: pause web")
    assert fleet.current().pins[PATH].paused
    paused = {
        canaries[0]: (v2, "held_back"),
        canaries[1]: (v2, "held_back"),
        held: (v2, "paused"),
        others[0]: (v2, "paused"),
        others[1]: (v2, "paused"),
    }
    loop.wait_for_states(paused, "v2 paused where not held back")
    code, web = loop.fleet_status("--max-failures", "0")
    assert (code, web["paused"]) == (4, True)
    assert (web["counts"]["paused"], web["counts"]["failed"]) == (3, 2)

    step("paused")
    # --- 4. the next wave opens: nobody takes v2 ---------------------------------------------
    version = fleet.release_later(timedelta(days=2), "the 100% wave is due")
    eventually(
        lambda: loop.release_versions() == dict.fromkeys(every, version),
        f"release {version} applied on every device",
        show=loop.seen,
    )
    assert loop.app_states() == paused
    _, web = loop.fleet_status()
    assert web["wave"] == "wave 2 of 2 (100%)"
    assert loop.engine_revisions() == {d: {v1} for d in every}

    step("next wave: nobody took v2")
    # --- 5. resumed with v3 on the canaries, then aborted ------------------------------------
    assert fleet.cli("rollout", "resume", APP).code == 0
    v3_text, v3 = web_manifest(
        loop.image, health_path="/index.html", waves=True, env={"EDITION": "3"}
    )
    fleet.repo.write(PATH, v3_text)
    fleet.release("web v3")
    loop.wait_for_states(
        {
            canaries[0]: (v3, "running"),
            canaries[1]: (v3, "running"),
            held: (v3, "pending"),
            others[0]: (v3, "pending"),
            others[1]: (v3, "pending"),
        },
        "v3 on the canaries without a hold",
    )
    _, web = loop.fleet_status()
    assert (web["counts"]["applied"], web["counts"]["pending"]) == (2, 3)

    step("v3 on canaries")
    # The registry goes away: the way back to v1 needs nothing but the engine and state_dir.
    loop.registry.stop()
    try:
        aborted = fleet.cli("rollout", "abort", APP, "--revision", v3[:12])
        assert aborted.code == 0, aborted.err
        fleet.release("abort web v3")
        assert fleet.current().pins[PATH].abort == v3
        # The canaries that ran v3 hold it back; the others never take it: paused by the fleet.
        loop.wait_for_states(
            {
                canaries[0]: (v3, "held_back"),
                canaries[1]: (v3, "held_back"),
                held: (v3, "paused"),
                others[0]: (v3, "paused"),
                others[1]: (v3, "paused"),
            },
            "v3 aborted",
        )
    finally:
        loop.registry.start()
    assert loop.engine_revisions() == {d: {v1} for d in every}
    for name in canaries[:2]:
        held_back = loop.device(name).status()["held_back"]
        assert (APP, v3) in [(h["app"], h["revision"]) for h in held_back]
    code, web = loop.fleet_status()
    assert (web["abort"], web["still_running_aborted"]) == (v3, 0)
    assert web["counts"] == {
        "targeted": 7,
        "applied": 0,
        "pending": 0,
        "paused": 3,
        "failed": 2,
        "older": 1,
        "missing": 0,
        "never_seen": 1,
        "stale": 0,
    }
    assert (web["tried"], web["failed"]) == (2, 2)
    text = fleet.cli("fleet-status", "--prometheus", loop.prometheus.url)
    assert f"{APP}: aborting {v3[:12]}: 0 device(s) still run it" in text.out

    step("aborted")
    # --- 6. a device that stops is stale, not forgotten --------------------------------------
    stopped = every.index(others[0])
    daemons[stopped].terminate()
    assert daemons[stopped].wait(timeout=60) == 0
    eventually(
        lambda: loop.fleet_status()[1]["counts"]["stale"] == 1,
        f"{others[0]} stale",
        show=loop.seen,
    )
    run = fleet.cli("fleet-status", "--prometheus", loop.prometheus.url, "--json")
    reports = {d["device"]: d for d in json.loads(run.out)["devices"]}
    assert (reports[others[0]]["reporting"], reports[others[0]]["stale"]) == (False, True)
    # Its series are stale in Prometheus now; it still counts in the state it was last seen in.
    _, web = loop.fleet_status()
    (row,) = [r for r in web["devices"] if r["device"] == others[0]]
    assert (row["state"], row["stale"]) == ("paused", True)
    assert (web["counts"]["paused"], web["counts"]["missing"]) == (3, 0)
    step("stale")


def test_a_server_on_a_port_another_holds_is_not_taken_for_ours(tmp_path: Path):
    """A second Pushgateway given the first one's port fails to bind and exits: its start must
    say so, not take the first one's readiness answer for its own."""
    try:
        first = Pushgateway(tmp_path / "first").__enter__()
    except PrometheusUnavailable as exc:
        pytest.skip(str(exc))
    try:
        second = Pushgateway(tmp_path / "second")
        second.port = first.port
        with pytest.raises(RuntimeError, match="pushgateway exited"):
            second.start()
    finally:
        first.stop()


def test_a_pushgateway_starts_empty_whatever_earlier_ones_were_pushed(tmp_path: Path):
    """Each test's Pushgateway holds only what that test pushes (Debian's build would persist
    every group to one file in /var/lib and load it into the next gateway)."""
    from testkit.prometheus import DeviceExporter

    for run in ("first", "second"):
        try:
            gateway = Pushgateway(tmp_path / run).__enter__()
        except PrometheusUnavailable as exc:
            pytest.skip(str(exc))
        try:
            with urllib.request.urlopen(f"{gateway.url}/api/v1/metrics", timeout=10) as answer:
                assert json.loads(answer.read())["data"] == [], run
            DeviceExporter(f"{tmp_path.name}-{run}", [(APP, "1" * 64, "running")]).push(gateway)
        finally:
            gateway.stop()
