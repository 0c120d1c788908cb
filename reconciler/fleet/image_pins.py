"""`release --resolve-images`: pin every tagged image of the checkout to its current digest.

Shell: asks a registry, through the local container engine (the docker SDK's distribution API,
with the engine client's usual credentials), which digest each tag names now, so the signed
release makes devices pull exactly those bytes (`repo@sha256:...`) even if the tag moves later.
Images already given by digest are kept as they are. A tag that cannot be resolved is an error
naming the file, container and reason: a release must not silently fall back to a moving tag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.adapters import checkout
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
    lookup = resolver or engine_resolver()
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
                digest = cache[image] if image in cache else lookup(image)
            except Exception as exc:  # any registry or engine failure is reported
                problems.append(
                    Problem(path, f"spec.containers[{i}].image", f"cannot resolve {image}: {exc}")
                )
                continue
            cache[image] = digest
            pins.setdefault(path, {})[container.name] = f"{_repository(image)}@{digest}"
    if problems:
        raise ProblemsError(problems)
    return pins


def engine_resolver() -> Resolver:
    """Digests through the local engine (DOCKER_HOST or the default socket)."""
    import docker
    import docker.errors

    client = docker.from_env(timeout=60)

    def digest(image: str) -> str:
        try:
            found = str(client.images.get_registry_data(image).id)
        except docker.errors.NotFound:
            # Podman 4 has no distribution endpoint (404): pull the tag instead and read the
            # digest the engine recorded for this repository.
            found = _pulled_digest(client, image)
        if not found.startswith("sha256:"):
            raise ValueError(f"the registry gave no sha256 digest (got {found!r})")
        return found

    return digest


def _pulled_digest(client: Any, image: str) -> str:
    repository = _repository(image)
    tag = image[len(repository) + 1 :] or "latest"
    pulled = client.images.pull(repository, tag=tag)
    for repo_digest in pulled.attrs.get("RepoDigests") or []:
        name, _, found = str(repo_digest).partition("@")
        if name.removeprefix("localhost/") == repository:
            return found
    return ""


def _repository(image: str) -> str:
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def describe(pins: Mapping[str, Mapping[str, str]]) -> list[str]:
    return [
        f"{path}: {c} -> {ref}" for path, refs in sorted(pins.items()) for c, ref in refs.items()
    ]
