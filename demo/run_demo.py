"""The demo behind `./demo.sh`: one device, a fleet repo made from fleet-repo-template/, and a lab
signer standing in for GitHub Actions and Sigstore, all on this machine and on loopback.

Four steps, each followed by `reconciler status`: the first signed release applied and the app
serving; a committed change applied; a broken change rolled back by itself; a tampered manifest
refused. The demo checks every outcome it announces and exits 1 when one is not so.

Everything it makes lives in one directory ($RECONCILER_DEMO_DIR, default /var/tmp/reconciler-demo)
and one engine namespace ($RECONCILER_DEMO_NAMESPACE, default `demo`). A run first removes what an
earlier run left (see `lab.clean`), so every run starts clean; `--clean` only removes it.
Left running at the end: the app container, so a person can curl it, and the engine (the demo
starts one only when none answers). Stopped: the registry the demo started.

Run from the repository root as `.venv/bin/python -m demo.run_demo [--clean]` (./demo.sh does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from demo import lab
from reconciler import model
from reconciler.core import labels
from testkit.fleet_repos import GIT_ENV
from testkit.loopback import free_port
from testkit.registry import LocalRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "fleet-repo-template"
CONSOLE_SCRIPT = Path(sys.executable).parent / "reconciler"
DIR_ENV = "RECONCILER_DEMO_DIR"
NAMESPACE_ENV = "RECONCILER_DEMO_NAMESPACE"
# A fixed place, so a rerun finds what the last run left; lab.clean refuses a symlink there and
# a directory without the demo's marker.
DEFAULT_DIR = Path("/var/tmp/reconciler-demo")  # noqa: S108
DEFAULT_NAMESPACE = "demo"

# The lab CA signs as the identity a real fleet's release workflow has, so the device pins exactly
# what a production device pins; only trust.trusted_root differs (the lab CA, not Sigstore's).
IDENTITY = "https://github.com/demo-org/fleet/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.githubusercontent.com"
DEVICE = "kiosk-demo-01"
DEVICE_LABELS = "{role: kiosk, site: demo, ring: canary}"  # the template app selects role=kiosk
MANIFEST = "apps/web/app.yaml"
TEMPLATE_IMAGE = "ghcr.io/your-org/web:1.0"
TEMPLATE_PORT = "8080"
TAMPERED_IMAGE = "ghcr.io/attacker/web:1.1"
CONFIG = "device/config.yaml"  # relative to the demo directory, where commands run
WIDTH = 100


def say(text: str) -> None:
    print(textwrap.fill(text, width=WIDTH), flush=True)


def heading(text: str) -> None:
    print(flush=True)
    say(text)


def indented(text: str, prefix: str = "    ") -> None:
    for line in text.rstrip("\n").splitlines():
        print((prefix + line).rstrip(), flush=True)


@dataclass
class Demo:
    """One run: its directory, namespace and engine, and what it started on the way."""

    root: Path
    namespace: str
    engine: lab.Engine
    record: lab.Record = field(default_factory=lab.Record)
    registry: LocalRegistry | None = None
    app_port: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def fleet(self) -> Path:
        return self.root / "fleet"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/"

    # --- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.record = lab.start_directory(self.root, self.namespace)
        how = "started by the demo" if self.engine.started_here else "already running"
        heading("Reconciler demo: one device, one fleet repo, one signer, all on this machine.")
        indented(
            f"state:     {self.root} (fleet repo, lab CA, device config and state)\n"
            f"engine:    {self.engine.url} ({how})\n"
            f"namespace: {self.namespace} (the demo's containers carry this label)"
        )
        self.registry, refs = lab.publish_images(
            self.engine.client, self.record, self.root, namespace=self.namespace
        )
        self.app_port = free_port()
        indented(
            f"registry:  {self.registry.address} (web 1.0 and 1.1 serve a page, 1.2 crashes; "
            "stopped at the end)\n"
            f"app:       {self.url} (where the device publishes the example app)"
        )
        heading(
            "Setup. The fleet repo is a copy of fleet-repo-template/: one example app (web, with "
            "an http health check) and four example devices. Its image line now points at the "
            "local registry and its port at 127.0.0.1."
        )
        self.make_fleet_repo(refs["1.0"])
        self.write_device_config()
        say(
            "The lab CA stands in for GitHub Actions and Sigstore: it signs releases as the "
            "release workflow's identity, and the device config pins exactly that identity. The "
            "commands below run in the state directory, as you would type them there (with "
            ".venv/bin on your PATH); their JSON log lines go to logs/reconciler.log."
        )
        self.reconciler("lab-ca", "init", "lab-ca")
        print(f"  {CONFIG} pins:", flush=True)
        indented(
            "trust:\n"
            "  identities:\n"
            f"    - identity: {IDENTITY}\n"
            f"      issuer: {ISSUER}\n"
            "  trusted_root: lab-ca/trusted_root.json   # a real device omits it: Sigstore's root"
        )

    def make_fleet_repo(self, image: str) -> None:
        """A copy of the template whose app pulls from the local registry and binds loopback."""
        shutil.copytree(TEMPLATE, self.fleet)
        self.edit(f"image: {TEMPLATE_IMAGE}", f"image: {image}")
        self.edit(f'ports: ["{TEMPLATE_PORT}:80"]', f'ports: ["127.0.0.1:{self.app_port}:80"]')
        self.edit(f"port: {TEMPLATE_PORT},", f"port: {self.app_port},")
        self.git("init", "-q", "-b", "main")
        self.commit("Start the fleet from fleet-repo-template")

    def write_device_config(self) -> None:
        registry = self.registry.address if self.registry else "127.0.0.1"
        config = self.root / CONFIG
        config.parent.mkdir(parents=True)
        config.write_text(
            "# The demo device. A real one has this as /etc/reconciler/config.yaml.\n"
            f"device:\n  name: {DEVICE}\n  labels: {DEVICE_LABELS}\n"
            f"source:\n  url: {self.fleet}\n  branch: main\n  poll_interval: 30s\n"
            "trust:\n"
            "  identities:\n"
            f"    - identity: {IDENTITY}\n"
            f"      issuer: {ISSUER}\n"
            f"  trusted_root: {self.root / 'lab-ca' / 'trusted_root.json'}\n"
            f"runtime:\n  docker_host: {self.engine.url}\n  namespace: {self.namespace}\n"
            "# Short, so the demo is quick; a real device keeps the defaults (120s, 10s).\n"
            "health:\n  timeout: 20s\n  stable_for: 2s\n"
            f'policy:\n  allowed_registries: ["{registry}/demo/"]\n'
            f"state_dir: {self.root / 'device' / 'state'}\n"
            'metrics:\n  listen: ""\n',
            encoding="utf-8",
        )

    # --- the four steps ------------------------------------------------------------------------

    def step_1_first_release(self) -> None:
        heading(
            "Step 1: the first release is applied. CI signs release 1 of the fleet repo; the "
            "device runs one reconcile cycle: it fetches the repo, checks the signature against "
            "the identity it pins, pulls the image, starts the app and waits for its health "
            "check (GET /healthz) to pass."
        )
        self.ci_release()
        self.reconciler("once", "--config", CONFIG)
        self.expect_page("1.0")
        say(f'Result: the app is serving: {self.url} answers "{lab.page("1.0")}".')
        self.status()

    def step_2_change(self) -> None:
        heading(
            "Step 2: a committed change is applied. A pull request moves web from 1.0 to 1.1. "
            "Its check validates every manifest and previews the rollout for the devices in "
            "devices/inventory.yaml (the kiosks get the change, the gateway does not):"
        )
        self.edit("/demo/web:1.0", "/demo/web:1.1")
        self.commit("web 1.1")  # the pull request's commit: checks judge committed files
        self.reconciler("validate", "fleet")
        self.reconciler("plan", "fleet", "--inventory", "fleet/devices/inventory.yaml")
        say(
            "A reviewer approves, the pull request is merged, CI signs release 2, and the "
            "device runs its next cycle (the daemon, `reconciler run`, does so every poll "
            "interval):"
        )
        self.ci_release()
        self.reconciler("once", "--config", CONFIG)
        self.expect_page("1.1")
        say(f'Result: the change was applied: {self.url} now answers "{lab.page("1.1")}".')
        self.status()

    def step_3_broken_change(self) -> None:
        heading(
            "Step 3: a broken change is rolled back by itself. Release 3 moves web to 1.2, which "
            "crashes right after it starts. The device applies it, sees the container crash and "
            "restart, "
            "puts 1.1 back (from what it kept locally: no network needed), holds 1.2 back, and "
            "`reconciler once` exits with 3:"
        )
        self.edit("/demo/web:1.1", "/demo/web:1.2")
        self.commit("web 1.2")
        self.ci_release()
        self.reconciler("once", "--config", CONFIG, expect=3)
        self.expect_page("1.1")
        held = [(h["app"], h["reason"]) for h in self.status_json()["held_back"]]
        if len(held) != 1 or held[0][0] != "web" or "health check failed" not in held[0][1]:
            raise lab.DemoError(f"expected web 1.2 held back by its health check, got {held}")
        say(
            f"Result: the broken change was rolled back: {self.url} still answers "
            f'"{lab.page("1.1")}", and status lists the 1.2 revision as held back: it is not '
            "tried again until its manifest changes."
        )
        self.status()

    def step_4_tampered_manifest(self) -> None:
        heading(
            "Step 4: a tampered manifest is refused. Someone who can push to the Git server "
            f"(but is not the release workflow) changes the image to {TAMPERED_IMAGE} after "
            "release 3 was signed. The device compares every manifest with the sha256 that the "
            "signed release pins, refuses the whole commit, pulls nothing and changes nothing; "
            "`reconciler once` exits with 1:"
        )
        registry = self.registry.address if self.registry else ""
        self.edit(f"image: {registry}/demo/web:1.2", f"image: {TAMPERED_IMAGE}")
        self.commit("pushed straight to the Git server, not released")
        before = self.containers()
        self.reconciler("once", "--config", CONFIG, expect=1)
        self.expect_page("1.1")
        if self.containers() != before:
            raise lab.DemoError(f"expected no container touched: {before} -> {self.containers()}")
        if not self.status_json()["last_verification_failure"]:
            raise lab.DemoError("expected status to name the refused release; it names none")
        say(
            f"Result: the tampered manifest was refused: {self.url} still answers "
            f'"{lab.page("1.1")}", and status says why under "last refused release".'
        )
        self.status()

    def finish(self) -> None:
        self.stop_registry()
        seconds = time.monotonic() - self.started
        heading(f"Done in {seconds:.0f} s. What is left:")
        if self.engine.started_here:
            engine_line = (
                f"the engine at {self.engine.url} keeps running (the demo started it; stop it "
                f"with: kill $(cat {self.engine.pidfile}))"
            )
        else:
            engine_line = f"the engine at {self.engine.url} keeps running, as it was before"
        indented(
            f"- the app keeps running: curl {self.url}\n"
            f"- {engine_line}\n"
            "- the registry is stopped (the device keeps the images it pulled)\n"
            f"- look around: cd {self.root} && {CONSOLE_SCRIPT} status --config {CONFIG}\n"
            "- remove the demo's containers, image tags and directory: ./demo.sh --clean"
        )

    # --- helpers -------------------------------------------------------------------------------

    def stop_registry(self) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None

    def ci_release(self) -> None:
        """What the template's release workflow does: sign the snapshot, commit .fleet/."""
        self.reconciler(
            "release", "fleet", "--lab-ca", "lab-ca", "--identity", IDENTITY, "--issuer", ISSUER
        )
        version = json.loads((self.fleet / ".fleet" / "release.json").read_text())["version"]
        self.commit(f"release {version}", paths=(".fleet",))

    def edit(self, old: str, new: str) -> None:
        path = self.fleet / MANIFEST
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise lab.DemoError(f"{path}: expected one {old!r} to replace (template changed?)")
        path.write_text(text.replace(old, new), encoding="utf-8")

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.fleet,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise lab.DemoError(f"git {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def commit(self, message: str, *, paths: tuple[str, ...] = ()) -> None:
        self.git("add", "-A", *paths)
        self.git("commit", "-q", "-m", message)
        indented(f'(git) committed "{message}" as {self.git("rev-parse", "HEAD")[:12]}', "  ")

    def reconciler(self, *args: str, expect: int = 0) -> str:
        """Run the CLI in the demo directory and show what it says; its stdout.

        Every run's stderr also goes to logs/reconciler.log; for `once` that is all it goes to
        (JSON log records, one a line), other verbs write prose there and it is shown.
        """
        print(f"  $ reconciler {' '.join(args)}", flush=True)
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), *args],
            cwd=self.root,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / "reconciler.log").open("a", encoding="utf-8") as log:
            log.write(f"$ reconciler {' '.join(args)}  (exit {result.returncode})\n")
            log.write(result.stderr)
        indented(result.stdout)
        if args[0] != "once":
            indented(result.stderr)
        if result.returncode != expect:
            tail = "\n".join(result.stderr.splitlines()[-15:])
            raise lab.DemoError(
                f"`reconciler {' '.join(args)}` exited {result.returncode}, expected {expect}:\n"
                f"{tail}"
            )
        return result.stdout

    def status(self) -> None:
        self.reconciler("status", "--config", CONFIG)

    def status_json(self) -> dict[str, list[dict[str, str]]]:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), "status", "--json", "--config", CONFIG],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        doc: dict[str, list[dict[str, str]]] = json.loads(result.stdout)
        return doc

    def containers(self) -> list[tuple[str, str]]:
        """(id, status) of the demo's containers: what a refusal must leave as it was."""
        by_label = {"label": f"{model.LABEL_NAMESPACE}={self.namespace}"}
        found = self.engine.client.containers.list(all=True, filters=by_label)
        return sorted((c.id, c.status) for c in found)

    def expect_page(self, version: str, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (body := lab.fetch(self.url)) != lab.page(version):
            if time.monotonic() > deadline:
                raise lab.DemoError(f'expected {self.url} to answer "{lab.page(version)}": {body}')
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./demo.sh",
        description="The reconciler demo: a local fleet repo, signed releases, one device.",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="only remove what the demo left: its containers, image tags and directory",
    )
    args = parser.parse_args(argv)
    root = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR).absolute()
    namespace = os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    if problem := labels.dns_label_error(namespace):
        print(f"demo: {NAMESPACE_ENV}: {problem}", file=sys.stderr)
        return 2
    try:
        if args.clean:
            found = lab.find_engine()
            removed = lab.clean(root, namespace, found.client if found else None, build_cache=True)
            print(
                f"demo: removed {removed.containers} container(s), {removed.image_tags} image "
                f"tag(s) and {root}"
            )
            return 0
        started = time.monotonic()
        demo = Demo(root, namespace, lab.acquire_engine(), started=started)
        lab.clean(root, namespace, demo.engine.client, build_cache=False)
        try:
            demo.prepare()
            demo.step_1_first_release()
            demo.step_2_change()
            demo.step_3_broken_change()
            demo.step_4_tampered_manifest()
        finally:
            demo.stop_registry()
        demo.finish()
    except (lab.DemoError, OSError, docker.errors.DockerException) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        print(f"(logs: {root / 'logs'}; ./demo.sh starts again from scratch)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted; ./demo.sh starts again from scratch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
