"""Which digest an image tag names now, asked through the local container engine.

For `release --resolve-images` (fleet.image_pins): the docker SDK's distribution API, with the
engine client's usual credentials (DOCKER_HOST or the default socket). Podman 4 has no
distribution endpoint, so there the tag is pulled and the digest the engine recorded is read.
Must not: decide what to pin (image_pins does), or touch containers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from reconciler.adapters.docker_translate import split_image_ref


def engine_resolver() -> Callable[[str], str]:
    """image ref -> "sha256:..." digest, through the local engine (DOCKER_HOST or the default
    socket)."""
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
    repository, tag = split_image_ref(image)
    pulled = client.images.pull(repository, tag=tag)
    for repo_digest in pulled.attrs.get("RepoDigests") or []:
        name, _, found = str(repo_digest).partition("@")
        if name.removeprefix("localhost/") == repository:
            return found
    return ""
