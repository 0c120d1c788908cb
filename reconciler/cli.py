"""Command line: builds settings and adapters, maps errors to exit codes."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reconciler` console script."""
    del argv
    return 0
