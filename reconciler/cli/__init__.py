"""Command line: the `reconciler` parser, `main` and its exit codes (SPEC 3.3).

Owns: the top-level parser (verbs in the order `--help` lists them) and turning a parsed verb
into its handler's exit code. The verbs live in `device_verbs` (run on a device) and
`fleet_verbs` (run on a fleet repo); exit codes and shared helpers in `common`. Heavy modules
(docker, git, sigstore) are imported inside the verbs that need them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reconciler import __version__
from reconciler.cli import device_verbs, fleet_verbs
from reconciler.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLED_BACK,
    Handler,
)

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_ROLLED_BACK", "build_parser", "main"]


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
    device_verbs.add_verbs(verbs)
    fleet_verbs.add_verbs(verbs)
    # The rollout loop (SPEC 2.3, 3.3): fleet-status and rollout pause|resume|abort|gate.
    fleet_verbs.add_rollout_verbs(verbs)
    # Device-local hold (SPEC 3.3 lists it last).
    device_verbs.add_hold_verbs(verbs)
    return parser
