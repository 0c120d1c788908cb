"""Env files on the device (SPEC 2.1 `env_file`): read, digested and parsed for each container.

Shell: the only reader of env files. Their digest goes into the container's spec digest (a
changed secret replaces the container); their values into the container. A file that is
missing, unreadable, not a regular file, too big or malformed blocks its app with a reason
naming the file and line, and never the whole cycle.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence

from reconciler import model
from reconciler.adapters import docker_translate
from reconciler.core import targets
from reconciler.errors import Problem, ProblemsError

# One app's env files: (container -> digest field for the spec, container -> values).
EnvFiles = tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]


def read_all(wanted: Sequence[targets.Target]) -> tuple[dict[str, EnvFiles], dict[str, str]]:
    """Each target's env files, and the apps whose env_file cannot be used (-> the reason)."""
    env: dict[str, EnvFiles] = {}
    broken: dict[str, str] = {}
    for target in wanted:
        try:
            env[target.name] = of_manifest(target.manifest)
        except ProblemsError as exc:
            broken[target.name] = "; ".join(str(p) for p in exc.problems)
    return env, broken


def of_manifest(manifest: model.AppManifest) -> EnvFiles:
    """Read each container's env_file; ProblemsError naming the file when one is unusable."""
    extra: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, str]] = {}
    for spec in manifest.containers:
        if spec.env_file is None:
            continue
        data = _read(spec.env_file)
        extra[spec.name] = {"env_file_sha256": hashlib.sha256(data).hexdigest()}
        values[spec.name] = docker_translate.parse_env_file(data, file=spec.env_file)
    return extra, values


def _read(path: str) -> bytes:
    """The env file's bytes, read with the same 1 MiB cap as `docker_translate.read_env_file`;
    ProblemsError naming the file when it is missing, unreadable or too big."""
    limit = docker_translate.MAX_ENV_FILE_BYTES
    try:
        # Non-blocking open, then only a regular file is read: a FIFO or device put in its
        # place would otherwise block the cycle (and the daemon) forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ProblemsError([Problem(path, "", "env file is not a regular file")])
            data = handle.read(limit + 1)
    except OSError as exc:
        reason = f"cannot read the env file: {exc.strerror or type(exc).__name__}"
        raise ProblemsError([Problem(path, "", reason)]) from None
    if len(data) > limit:
        raise ProblemsError([Problem(path, "", f"env file larger than {limit} bytes")])
    return data
