"""Command line: parses arguments, builds settings and adapters, maps errors to exit codes.

Exit codes (SPEC 3.3): 0 success, 1 failure (state kept / invalid input), 2 bad config or usage,
3 rolled back. Heavy modules (docker, git, sigstore) are imported inside the verbs that need them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.core import durations
from reconciler.errors import ProblemsError

if TYPE_CHECKING:
    from reconciler.core.settings import DeviceSettings
    from reconciler.device.cycle import CycleOutcome, Reconciler

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_ROLLED_BACK = 3

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `reconciler` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps pull-based reconciler for devices: polls a fleet repo, verifies the "
        "signed release, runs the selected apps on the local container engine, rolls back "
        "unhealthy changes.",
        epilog="Run 'reconciler VERB --help' for a verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    verbs = parser.add_subparsers(title="verbs", metavar="VERB")
    _add_device_verbs(verbs)
    _add_repo_verbs(verbs)
    return parser


def _verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help_text: str,
    example: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = verbs.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_device_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = _verb(
        verbs,
        "run",
        help_text="The daemon: cycle every poll interval; reload on config/labels change and "
        "SIGHUP; stop on SIGTERM.",
        example="reconciler run --config /etc/reconciler/config.yaml",
        handler=_run,
    )
    once = _verb(
        verbs,
        "once",
        help_text="Run one reconcile cycle, then exit (0 converged or nothing to do, 1 failed "
        "and state kept, 2 bad config, 3 rolled back).",
        example="reconciler once --config ./lab/config.yaml",
        handler=_once,
    )
    status = _verb(
        verbs,
        "status",
        help_text="Show the applied release and commit, apps and their containers, held-back "
        "revisions, last fetch and last error.",
        example="reconciler status --json | jq .apps",
        handler=_status,
    )
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sync = _verb(
        verbs,
        "sync",
        help_text="Ask the running daemon to cycle now.",
        example="reconciler sync --config /etc/reconciler/config.yaml",
        handler=_sync,
    )
    rollback = _verb(
        verbs,
        "rollback",
        help_text="Return every app to the previous good state by hand (the revisions left are "
        "held back until their manifest changes). With a daemon running, it does it.",
        example="reconciler rollback --config /etc/reconciler/config.yaml",
        handler=_rollback,
    )
    for parser in (run, once, status, sync, rollback):
        parser.add_argument(
            "--config",
            help="device config (default: $RECONCILER_CONFIG, then /etc/reconciler/config.yaml)",
        )
    for parser in (run, once, rollback):
        parser.add_argument(
            "--log-level", default="info", choices=("debug", "info", "warning", "error")
        )


def _device_settings(args: argparse.Namespace, verb: str) -> tuple[str, DeviceSettings] | int:
    """(config path, settings), or the exit code after printing every config problem."""
    import os

    from reconciler.core import settings
    from reconciler.device import wiring
    from reconciler.errors import SettingsError

    path = settings.config_path(args.config, os.environ)
    try:
        return path, wiring.load_settings(path)
    except SettingsError as exc:
        print(f"{verb}: bad config, nothing was done:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG


def _on_device(
    args: argparse.Namespace, verb: str, act: Callable[[Reconciler], CycleOutcome]
) -> CycleOutcome | int:
    """Load the config, take the state lock, open the adapters and `act`; an exit code when
    any of that fails (StateLocked propagates: `rollback` hands over to a running daemon)."""
    from reconciler import logs
    from reconciler.core.state import StateError
    from reconciler.device import wiring
    from reconciler.device.state_store import StateStore

    loaded = _device_settings(args, verb)
    if isinstance(loaded, int):
        return loaded
    _path, device_settings = loaded
    logs.setup(level=args.log_level)
    try:
        with (
            StateStore(device_settings.state_dir).lock(),
            wiring.open_device(device_settings) as dev,
        ):
            return act(dev.reconciler)
    except (StateError, OSError) as exc:
        print(f"{verb}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _once(args: argparse.Namespace) -> int:
    from reconciler.device.state_store import StateLocked

    try:
        outcome = _on_device(args, "once", lambda r: r.cycle())
    except StateLocked as exc:
        print(f"once: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, int):
        return outcome
    print(f"{outcome.result}: {outcome.message}")
    return outcome.exit_code


def _run(args: argparse.Namespace) -> int:
    from reconciler import logs
    from reconciler.core.state import StateError
    from reconciler.device import daemon
    from reconciler.device.state_store import StateLocked

    loaded = _device_settings(args, "run")
    if isinstance(loaded, int):
        return loaded
    path, device_settings = loaded
    logs.setup(level=args.log_level)
    try:
        return daemon.run(path, device_settings)
    except (StateLocked, StateError, OSError) as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from reconciler.adapters.docker_engine import DockerEngine
    from reconciler.core import state, status
    from reconciler.device import daemon, state_store
    from reconciler.errors import EngineError

    loaded = _status_settings(args)
    if isinstance(loaded, int):
        return loaded
    ds, config_error = loaded
    try:
        saved = state_store.StateStore(ds.state_dir).load()
    except (state.StateError, OSError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    engine = DockerEngine(
        base_url=ds.runtime.docker_host, namespace=ds.runtime.namespace, timeout=10
    )
    observed = volumes = engine_error = None
    try:
        observed = engine.list_managed()
        volumes = engine.list_volumes()
    except EngineError as exc:
        engine_error = str(exc)
    finally:
        engine.close()
    fetched = None
    if daemon.running_pid(ds.state_dir) is not None:
        from reconciler.device import metrics  # prometheus_client: only when a daemon may answer

        seconds = metrics.read_last_fetch(ds.metrics.listen)
        if seconds is not None:
            fetched = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = status.report(
        saved,
        device=ds.device.name,
        state_dir=ds.state_dir,
        observed=observed,
        volumes=volumes,
        engine_error=engine_error,
        state_dir_error=state_store.write_problem(ds.state_dir),
        fetched_by_daemon=fetched,
        config_error=config_error,
    )
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print("\n".join(status.render(doc)))
    return EXIT_OK


def _status_settings(args: argparse.Namespace) -> tuple[DeviceSettings, str | None] | int:
    """The settings `status` reports on, and why the config or labels.d cannot be loaded now.

    A labels.d file that went bad does not hide the device's status: the config alone names
    state_dir and the engine, and the problem is shown (a running daemon keeps its previous
    settings). A config file that is itself invalid is a bad config (exit 2).
    """
    import os

    from reconciler import text
    from reconciler.core import settings
    from reconciler.device import wiring
    from reconciler.errors import SettingsError

    path = settings.config_path(args.config, os.environ)
    try:
        return wiring.load_settings(path), None
    except SettingsError as exc:
        failure: Exception = exc
    except Exception as exc:  # a parser crash on a hostile labels.d file
        failure = exc
    try:
        alone = wiring.read_config(path)
    except SettingsError:
        again = _device_settings(args, "status")  # prints every problem: exit 2
        return again if isinstance(again, int) else (again[1], None)
    if isinstance(failure, SettingsError):
        problem = text.one_line("; ".join(str(p) for p in failure.problems))
    else:
        problem = wiring.load_failure(path, alone.device.labels_dir, failure)
    return alone, problem


def _rollback(args: argparse.Namespace) -> int:
    from reconciler.device import daemon
    from reconciler.device.state_store import StateLocked

    try:
        outcome = _on_device(args, "rollback", lambda r: r.roll_back_by_hand())
    except StateLocked:
        loaded = _device_settings(args, "rollback")
        if isinstance(loaded, int):
            return loaded
        problem = daemon.request_rollback(loaded[1].state_dir)
        if problem:
            print(f"rollback: {problem}", file=sys.stderr)
            return EXIT_FAILED
        print("rollback: asked the running daemon to roll back; see reconciler status")
        return EXIT_OK
    if isinstance(outcome, int):
        return outcome
    print(f"{outcome.result}: {outcome.message}")
    return EXIT_OK if outcome.result == "converged" else EXIT_FAILED


def _sync(args: argparse.Namespace) -> int:
    from reconciler.device import daemon

    loaded = _device_settings(args, "sync")
    if isinstance(loaded, int):
        return loaded
    problem = daemon.send_sync(loaded[1].state_dir)
    if problem:
        print(f"sync: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print("sync: asked the daemon to cycle now")
    return EXIT_OK


def _add_repo_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = _verb(
        verbs,
        "validate",
        help_text="Validate every manifest committed at HEAD of a fleet repo, read as devices "
        "read it (for pull-request checks); uncommitted edits are listed, not judged.",
        example="reconciler validate ./fleet   # exit 0 valid, 1 invalid",
        handler=_validate,
    )
    validate.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")

    plan = _verb(
        verbs,
        "plan",
        help_text="Show which apps, revisions and images each device would get, and what "
        "changes against the last release.",
        example="reconciler plan ./fleet --inventory ./fleet/devices/inventory.yaml\n"
        "  reconciler plan ./fleet --labels role=gateway,ring=canary --device gw-01",
        handler=_plan,
    )
    plan.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="one device's labels: k=v,k2=v2")
    source.add_argument("--inventory", help="a devices/inventory.yaml file")
    plan.add_argument(
        "--device", default="device", help="device name with --labels (rollout bucket)"
    )

    release = _verb(
        verbs,
        "release",
        help_text="Write .fleet/release.json (the snapshot devices pin) from the manifests "
        "committed at HEAD; refused while manifests differ from HEAD.",
        example="reconciler release ./fleet --no-sign --expires-in 30d",
        handler=_release,
    )
    release.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")
    release.add_argument("--no-sign", action="store_true", help="write the file only")
    release.add_argument(
        "--resolve-images",
        action="store_true",
        help="pin each tagged image to its current digest (asks the registry through the "
        "local engine); devices then pull by digest",
    )
    release.add_argument(
        "--lab-ca", metavar="DIR", help="sign with a lab CA (see lab-ca init), not sigstore"
    )
    release.add_argument(
        "--identity",
        help="signer identity (URI or email): with --lab-ca the one to sign as; in CI the one "
        "the certificate must carry (a mismatch fails the release)",
    )
    release.add_argument(
        "--issuer", help="OIDC issuer in the certificate, like --identity (sign as / check)"
    )

    verify = _verb(
        verbs,
        "verify",
        help_text="Verify the checkout's signed release and every manifest pin with the "
        "config's trust settings, as a device would.",
        example="reconciler verify ./fleet --config /etc/reconciler/config.yaml",
        handler=_verify,
    )
    verify.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")
    verify.add_argument(
        "--config",
        help="device config (default: $RECONCILER_CONFIG, then /etc/reconciler/config.yaml)",
    )

    lab_ca = _verb(
        verbs,
        "lab-ca",
        help_text="A lab signing authority for air-gapped labs, demos and tests.",
        example="reconciler lab-ca init ./lab-ca",
        handler=_lab_ca,
    )
    lab_ca.add_argument("action", choices=("init",), help="init: create keys and trusted_root")
    lab_ca.add_argument("directory", help="where the lab CA lives (must not hold one yet)")
    release.add_argument(
        "--expires-in", default="30d", help="validity of the release (default 30d)"
    )


def _validate(args: argparse.Namespace) -> int:
    from reconciler.fleet import repo_verbs

    return repo_verbs.validate(Path(args.repo))


def _plan(args: argparse.Namespace) -> int:
    from reconciler.fleet import repo_verbs

    try:
        if args.inventory:
            devices = repo_verbs.inventory_devices(Path(args.inventory))
        else:
            labels = repo_verbs.parse_label_list(args.labels)
            devices = [repo_verbs.Device(args.device, labels)]
    except (ValueError, ProblemsError, OSError) as exc:
        for line in str(exc).splitlines():
            print(f"plan: {line}", file=sys.stderr)
        return EXIT_CONFIG
    return repo_verbs.plan(Path(args.repo), devices=devices)


def _release(args: argparse.Namespace) -> int:
    from reconciler.fleet import repo_verbs

    try:
        expires_in = durations.parse_duration(args.expires_in)
    except ValueError as exc:
        print(f"release: --expires-in: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.no_sign and args.lab_ca:
        print("release: --no-sign and --lab-ca exclude each other", file=sys.stderr)
        return EXIT_CONFIG
    if args.lab_ca and not (args.identity and args.issuer):
        print("release: --lab-ca needs --identity and --issuer", file=sys.stderr)
        return EXIT_CONFIG
    root = Path(args.repo)
    from reconciler.core import release
    from reconciler.fleet import trust_verbs

    images = None
    if args.resolve_images:
        from reconciler.fleet import image_pins

        try:
            images = image_pins.resolve(root)
        except ProblemsError as exc:
            for problem in exc.problems:
                print(f"release: {problem}", file=sys.stderr)
            print("release: nothing written", file=sys.stderr)
            return EXIT_FAILED
        for line in image_pins.describe(images):
            print(f"pinned: {line}", file=sys.stderr)
    previous = trust_verbs.read_if_present(root, release.RELEASE_PATH)
    code, data = repo_verbs.write_release(root, expires_in=expires_in, images=images)
    if code != EXIT_OK or data is None:
        return code
    if args.no_sign:
        trust_verbs.remove_stale_bundle(root)
        return EXIT_OK
    code = trust_verbs.sign_written_release(
        root,
        data,
        lab_ca=Path(args.lab_ca) if args.lab_ca else None,
        identity=args.identity,
        issuer=args.issuer,
    )
    if code != EXIT_OK:  # nothing half-done: an unsigned new release is not left behind
        trust_verbs.restore(root, release.RELEASE_PATH, previous)
    return code


def _verify(args: argparse.Namespace) -> int:
    from reconciler.fleet import trust_verbs

    loaded = _device_settings(args, "verify")
    if isinstance(loaded, int):
        return loaded
    return trust_verbs.verify(Path(args.repo), loaded[1].trust)


def _lab_ca(args: argparse.Namespace) -> int:
    from reconciler.fleet import trust_verbs

    return trust_verbs.lab_ca_init(Path(args.directory))
