"""Coverage-guided fuzzing of every input boundary with atheris (libFuzzer for Python).

Optional complement to `bench/fuzz_inputs.py`: libFuzzer mutates the seed documents of
`testkit/boundaries.py` guided by which branches of `reconciler` each input reaches. The first
byte of an input picks the boundary; a crash (anything but the documented error, or a message
that is unbounded or not one escaped line) stops the run with the input saved by libFuzzer.
Needs `pip install atheris` (in the `fuzz` extra).

    .venv/bin/python -m bench.fuzz_atheris -runs=100000 [-max_len=4096] [-timeout=2] [CORPUS_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["reconciler"]):
    from testkit import boundaries


def one_input(data: bytes) -> None:
    if not data:
        return
    boundary = boundaries.BOUNDARIES[data[0] % len(boundaries.BOUNDARIES)]
    failure = boundaries.check(boundary, data[1:])
    if failure is not None:
        raise RuntimeError(f"{boundary.name}: {type(failure).__name__}: {failure}") from failure


def seed_corpus() -> str:
    """A directory with each boundary's valid seed, prefixed by the byte that selects it."""
    directory = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
    for i, boundary in enumerate(boundaries.BOUNDARIES):
        data = boundaries.dump(boundary.seed, as_json=boundary.as_json)
        if boundary.name == "duration":
            data = str(boundary.seed).encode()
        (directory / boundary.name).write_bytes(bytes([i]) + data)
    return str(directory)


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(seed_corpus())
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=2")  # a case over 2 s is a hang
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
