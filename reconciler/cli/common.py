"""What every verb module shares: exit codes, how a verb is declared, loading the device config.

Exit codes (SPEC 3.3): 0 success, 1 failure (state kept / invalid input), 2 bad config or usage,
3 rolled back. A leaf module: the verb modules and `cli/__init__` import it, it imports neither.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from reconciler.core.settings import DeviceSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_ROLLED_BACK = 3

Handler = Callable[[argparse.Namespace], int]
# What `add_subparsers` returns; generic only to type checkers, hence a string.
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_verb(
    verbs: Verbs,
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


def load_device_settings(args: argparse.Namespace, verb: str) -> tuple[str, DeviceSettings] | int:
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
