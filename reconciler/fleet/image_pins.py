"""`release --resolve-images`: pin every tagged image of the checkout to its current digest.

Shell: asks a registry, through the local container engine (adapters.registry_digests), which
digest each tag names now, so the signed release makes devices pull exactly those bytes
(`repo@sha256:...`) even if the tag moves later. Images already given by digest are kept as they
are. A tag that cannot be resolved is an error naming the file, container and reason: a release
must not silently fall back to a moving tag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.adapters import checkout
from reconciler.adapters.docker_translate import split_image_ref
from reconciler.core import manifests
from reconciler.errors import Problem, ProblemsError

Resolver = Callable[[str], str]  # image ref -> "sha256:..." digest


def resolve(root: Path, *, resolver: Resolver | None = None) -> dict[str, dict[str, str]]:
    """{manifest path: {container: repo@digest}} for every valid manifest committed at HEAD
    (the manifests `release` pins), read from Git objects as devices read them.

    Invalid or unreadable manifests are skipped here, and so is a checkout without a commit:
    `release` reports them with every other problem.
    """
    snapshot = checkout.Snapshot.at(root)
    if snapshot is None:
        return {}
    files, _problems = snapshot.manifest_files()
    if resolver is None:
        from reconciler.adapters import registry_digests  # docker loads only when asked

        resolver = registry_digests.engine_resolver()
    pins: dict[str, dict[str, str]] = {}
    problems: list[Problem] = []
    cache: dict[str, str] = {}
    for path, data in sorted(files.items()):
        try:
            manifest = manifests.parse(data, path=path)
        except ProblemsError:
            continue
        for i, container in enumerate(manifest.containers):
            image = container.image
            if "@sha256:" in image:
                continue
            try:
                digest = cache[image] if image in cache else resolver(image)
            except Exception as exc:  # any registry or engine failure is reported
                problems.append(
                    Problem(path, f"spec.containers[{i}].image", f"cannot resolve {image}: {exc}")
                )
                continue
            cache[image] = digest
            repository, _tag = split_image_ref(image)
            pins.setdefault(path, {})[container.name] = f"{repository}@{digest}"
    if problems:
        raise ProblemsError(problems)
    return pins


def describe(pins: Mapping[str, Mapping[str, str]]) -> list[str]:
    return [
        f"{path}: {c} -> {ref}" for path, refs in sorted(pins.items()) for c, ref in refs.items()
    ]
