"""The fleet verbs, run on a fleet repo checkout in CI or on a laptop: `validate`, `plan`,
`release`, `verify`, `publish`, `lab-ca`; and the rollout loop: `fleet-status`,
`rollout pause|resume|abort|gate` (SPEC 3.3).

Each checks its arguments (bad usage: exit 2) and hands over to `fleet/`, which does the work
and returns the exit code. `release` strings the steps together: pin images, write the release,
sign it, and put the previous release back when signing fails.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from reconciler.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    Verbs,
    add_verb,
    load_device_settings,
)
from reconciler.core import durations
from reconciler.core.fleet_status import Threshold, parse_threshold
from reconciler.errors import ProblemsError


def add_verbs(verbs: Verbs) -> None:
    validate = add_verb(
        verbs,
        "validate",
        help_text="Validate every manifest committed at HEAD of a fleet repo, read as devices "
        "read it (for pull-request checks); uncommitted edits are listed, not judged.",
        example="reconciler validate ./fleet   # exit 0 valid, 1 invalid",
        handler=_validate,
    )
    validate.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")

    plan = add_verb(
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

    release = add_verb(
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
    release.add_argument(
        "--expires-in", default="30d", help="validity of the release (default 30d)"
    )

    verify = add_verb(
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

    publish = add_verb(
        verbs,
        "publish",
        help_text="Write the published tree of the signed release committed at HEAD (SPEC 2.4: "
        "latest.json, releases/, blobs/) for a static host, CDN or USB stick; verified first "
        "with the config's trust settings. Idempotent; only adds files.",
        example="reconciler publish ./fleet ./public --config ./device-config.yaml",
        handler=_publish,
    )
    # [REPO] OUT: argparse cannot say "an optional positional before a required one".
    publish.usage = "reconciler publish [-h] [--config CONFIG] [--allow-unsigned] [REPO] OUT"
    publish.add_argument(
        "paths",
        nargs="+",
        metavar="[REPO] OUT",
        help="fleet repo checkout (default .) and the directory to write the tree into",
    )
    publish.add_argument(
        "--config",
        help="device config whose trust settings verify the release (default: "
        "$RECONCILER_CONFIG, then /etc/reconciler/config.yaml)",
    )
    publish.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="publish without checking the signature (labs only; devices still verify)",
    )

    lab_ca = add_verb(
        verbs,
        "lab-ca",
        help_text="A lab signing authority for air-gapped labs, demos and tests.",
        example="reconciler lab-ca init ./lab-ca",
        handler=_lab_ca,
    )
    lab_ca.add_argument("action", choices=("init",), help="init: create keys and trusted_root")
    lab_ca.add_argument("directory", help="where the lab CA lives (must not hold one yet)")


def _validate(args: argparse.Namespace) -> int:
    from reconciler.fleet import validate

    return validate.validate(Path(args.repo))


def _plan(args: argparse.Namespace) -> int:
    from reconciler.fleet import devices, plan

    try:
        if args.inventory:
            planned = devices.inventory_devices(Path(args.inventory))
        else:
            labels = devices.parse_label_list(args.labels)
            planned = [devices.Device(args.device, labels)]
    except (ValueError, ProblemsError, OSError) as exc:
        for line in str(exc).splitlines():
            print(f"plan: {line}", file=sys.stderr)
        return EXIT_CONFIG
    return plan.plan(Path(args.repo), devices=planned)


def _release(args: argparse.Namespace) -> int:
    from reconciler.fleet import release_verb

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
    from reconciler.fleet import signing

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
    previous = signing.read_if_present(root, release.RELEASE_PATH)
    code, data = release_verb.write_release(root, expires_in=expires_in, images=images)
    if code != EXIT_OK or data is None:
        return code
    if args.no_sign:
        signing.remove_stale_bundle(root)
        return EXIT_OK
    code = signing.sign_written_release(
        root,
        data,
        lab_ca=Path(args.lab_ca) if args.lab_ca else None,
        identity=args.identity,
        issuer=args.issuer,
    )
    if code != EXIT_OK:  # nothing half-done: an unsigned new release is not left behind
        signing.restore(root, release.RELEASE_PATH, previous)
    return code


def _verify(args: argparse.Namespace) -> int:
    from reconciler.fleet import verify_verb

    loaded = load_device_settings(args, "verify")
    if isinstance(loaded, int):
        return loaded
    return verify_verb.verify(Path(args.repo), loaded[1].trust)


def _publish(args: argparse.Namespace) -> int:
    from reconciler.fleet import publish

    if len(args.paths) > 2:
        print("publish: expected [REPO] OUT, got more paths", file=sys.stderr)
        return EXIT_CONFIG
    repo, out = args.paths if len(args.paths) == 2 else (".", args.paths[0])
    trust_config = None
    if not args.allow_unsigned:
        loaded = load_device_settings(args, "publish")
        if isinstance(loaded, int):
            return loaded
        trust_config = loaded[1].trust
    return publish.publish(Path(repo), Path(out), trust_config)


def _lab_ca(args: argparse.Namespace) -> int:
    from reconciler.fleet import lab_ca

    return lab_ca.lab_ca_init(Path(args.directory))


# --- the rollout loop: fleet-status, rollout pause|resume|abort|gate (SPEC 2.3, 3.3) ----------


def add_rollout_verbs(verbs: Verbs) -> None:
    status = add_verb(
        verbs,
        "fleet-status",
        help_text="Per app of the checkout's release: newest revision, wave open now, devices "
        "targeted / applied / pending / paused / failed (held back or rolled back) / stale / "
        "never seen, from what devices report to Prometheus. Exit 4 when a newest revision "
        "failed on more devices than --max-failures.",
        example="reconciler fleet-status ./fleet --prometheus http://prom:9090 "
        "--inventory ./fleet/devices/inventory.yaml --max-failures 10%\n"
        "  reconciler fleet-status --prometheus $PROM --format markdown >> $GITHUB_STEP_SUMMARY",
        handler=_fleet_status,
    )
    status.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")
    _prometheus_arguments(status, required_max_failures=False)
    status.add_argument(
        "--inventory", help="a devices/inventory.yaml file: targets by selector, never-seen"
    )
    shape = status.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="JSON with every device")
    shape.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="text (default), markdown (a GitHub job summary) or json",
    )

    rollout = verbs.add_parser(
        "rollout",
        help="Pause, resume or abort an app's rollout in .fleet/rollout.yaml, or let the "
        "canary gate pause failing ones; `reconciler release` then signs it.",
        description="Edit .fleet/rollout.yaml in a fleet repo checkout (SPEC 2.3). Comments and "
        "other entries are kept; commit the file, then run reconciler release.",
    )

    # `reconciler rollout` alone: its own help (the actions), as bad usage.
    def rollout_usage(_args: argparse.Namespace) -> int:
        rollout.print_help()
        return EXIT_CONFIG

    rollout.set_defaults(handler=rollout_usage)
    actions = rollout.add_subparsers(title="actions", metavar="ACTION")
    for action, text in (
        ("pause", "devices not yet on the newest revision keep what they run"),
        ("resume", "remove the app's entry: pause and abort end"),
        ("abort", "devices running the revision return to their previous one and hold it back"),
    ):
        parser = add_verb(
            actions,
            action,
            help_text=f"{action.capitalize()} an app's rollout: {text}.",
            example=f"reconciler rollout {action} gw ./fleet"
            + (" --revision 3f2a9c01b7e4" if action == "abort" else ""),
            handler=_rollout_edit,
        )
        parser.set_defaults(action=action)
        parser.add_argument("app", help="the app's metadata.name")
        parser.add_argument("repo", nargs="?", default=".", help="fleet repo checkout")
        if action == "abort":
            parser.add_argument(
                "--revision",
                help="sha256 or a prefix of at least 12 hex digits (default: the newest, "
                "the one the checkout's release pins)",
            )
    gate = add_verb(
        actions,
        "gate",
        help_text="Pause every app whose newest revision failed on more devices than "
        "--max-failures allows. Exit 0 unchanged, 10 changed the file, 1 error.",
        example="reconciler rollout gate ./fleet --prometheus http://prom:9090 --max-failures 1",
        handler=_rollout_gate,
    )
    gate.add_argument("repo", nargs="?", default=".", help="fleet repo checkout (default .)")
    _prometheus_arguments(gate, required_max_failures=True)


def _prometheus_arguments(parser: argparse.ArgumentParser, *, required_max_failures: bool) -> None:
    parser.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    parser.add_argument(
        "--max-failures",
        required=required_max_failures,
        metavar="N|P%",
        help="failures allowed per newest revision: a device count, or a percent of the "
        "devices that tried it",
    )
    parser.add_argument(
        "--poll-interval",
        default="60s",
        help="the devices' poll interval (default 60s): a device with no successful fetch for "
        "3 of them is stale",
    )
    parser.add_argument(
        "--lookback",
        default="1d",
        help="how long a device that stopped reporting is still known, as a Prometheus "
        "duration (default 1d)",
    )


def _prometheus_options(
    args: argparse.Namespace, verb: str
) -> tuple[float, Threshold | None] | int:
    try:
        poll = durations.parse_duration(args.poll_interval)
        if poll <= 0:
            raise ValueError("--poll-interval must be positive")
        threshold = parse_threshold(args.max_failures) if args.max_failures else None
    except ValueError as exc:
        print(f"{verb}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not _PROMETHEUS_DURATION.fullmatch(args.lookback):
        print(f"{verb}: --lookback: expected a Prometheus duration like 1d or 6h", file=sys.stderr)
        return EXIT_CONFIG
    return poll, threshold


_PROMETHEUS_DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def _fleet_status(args: argparse.Namespace) -> int:
    from reconciler.fleet import devices, status_verb

    options = _prometheus_options(args, "fleet-status")
    if isinstance(options, int):
        return options
    poll, threshold = options
    listed = None
    if args.inventory:
        try:
            listed = {d.name: d.labels for d in devices.inventory_devices(Path(args.inventory))}
        except (ValueError, ProblemsError) as exc:
            for line in str(exc).splitlines():
                print(f"fleet-status: {line}", file=sys.stderr)
            return EXIT_CONFIG
    return status_verb.fleet_status_verb(
        Path(args.repo),
        prometheus=args.prometheus,
        output="json" if args.json else args.format,
        devices=listed,
        threshold=threshold,
        poll_interval=poll,
        lookback=args.lookback,
    )


def _rollout_edit(args: argparse.Namespace) -> int:
    from reconciler.fleet import rollout_verbs

    return rollout_verbs.edit(
        Path(args.repo), args.action, args.app, revision=getattr(args, "revision", None)
    )


def _rollout_gate(args: argparse.Namespace) -> int:
    from reconciler.fleet import rollout_verbs

    options = _prometheus_options(args, "rollout gate")
    if isinstance(options, int):
        return options
    poll, threshold = options
    if threshold is None:  # argparse requires it; kept for the type checker
        return EXIT_CONFIG
    return rollout_verbs.gate(
        Path(args.repo),
        prometheus=args.prometheus,
        threshold=threshold,
        poll_interval=poll,
        lookback=args.lookback,
    )
