"""The fleet verbs, run on a fleet repo checkout in CI or on a laptop: `validate`, `plan`,
`release`, `verify`, `publish`, `lab-ca` (SPEC 3.3).

Each checks its arguments (bad usage: exit 2) and hands over to `fleet/`, which does the work
and returns the exit code. `release` strings the steps together: pin images, write the release,
sign it, and put the previous release back when signing fails.
"""

from __future__ import annotations

import argparse
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
