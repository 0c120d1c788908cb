"""Device-side policy (SPEC 3.1 `policy`): limits enforced even on signed, valid manifests.

Pure: an `AppManifest` and a `DevicePolicy` in, every violation as an `errors.Problem` out (all of
them, not just the first). Called in the Select step before an app may run; a non-empty result
rejects the app's revision. It does not touch the filesystem: host paths are compared as written
after normalising `.` and `..`, never resolved, so a symlink under an allowed directory is the
device owner's business.

How references and paths are compared:

* Registries. An image reference is first made fully qualified the way Docker does it: the part
  before the first `/` is a registry only if it contains `.` or `:`, is `localhost`, or has an
  upper-case letter; otherwise the image is on `docker.io`, and a Docker Hub name with no
  namespace gets `library/` (`nginx` and `docker.io/nginx` are `docker.io/library/nginx`).
  `index.docker.io` is spelled `docker.io`. Tag and digest are dropped. Each
  `allowed_registries` entry is a prefix of that name compared component by component (split
  on `/`): `ghcr.io/acme` allows `ghcr.io/acme/app:1` but not `ghcr.io/acme-evil/app`, and
  `127.0.0.1:5000` does not allow `127.0.0.1:50000/x`. `docker.io` allows `nginx:1.25`;
  `docker.io/library` allows only official images.
* Host paths. Bind-mount sources and device host paths are normalised (`//` and `.` dropped,
  `..` removes the previous component, `..` at `/` stays at `/` as the kernel does) and must be
  an allowed path or below one, component by component: `/srv/gw` is under `/srv`, `/srvx` and
  `/srv/../etc` are not. Empty `allowed_host_paths` allows no host path at all.
"""

from __future__ import annotations

from reconciler import errors, model

_DEFAULT_REGISTRY = "docker.io"
# env_file is read by the reconciler (root) on the device: without a limit a manifest could copy
# any host file into a container's environment. The SPEC's secrets directory is always allowed.
SECRETS_DIR = "/etc/reconciler/secrets"


def check(app: model.AppManifest, policy: model.DevicePolicy) -> list[errors.Problem]:
    """Every way `app` breaks `policy`, in manifest order; empty when it may run."""
    problems: list[errors.Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(errors.Problem(app.path, field, message))

    # `/` normalises to the empty tuple, which allows everything; a relative entry allows nothing.
    normalised = (_normalise_path(entry) for entry in policy.allowed_host_paths)
    allowed_paths = [path for path in normalised if path is not None]
    for i, container in enumerate(app.containers):
        where = f"spec.containers[{i}]"
        registry_problem = _registry_problem(container.image, policy.allowed_registries)
        if registry_problem:
            problem(f"{where}.image", registry_problem)
        if policy.require_digest and "@sha256:" not in container.image:
            problem(
                f"{where}.image",
                f'image "{container.image}" is not pinned by digest (@sha256:...) '
                "and policy.require_digest is true",
            )
        if container.privileged and not policy.allow_privileged:
            problem(
                f"{where}.privileged",
                "privileged containers are not allowed: policy.allow_privileged is false",
            )
        if container.network_mode == "host" and not policy.allow_host_network:
            problem(
                f"{where}.network_mode",
                "host networking is not allowed: policy.allow_host_network is false",
            )
        for j, volume in enumerate(container.volumes):
            if volume.is_bind:
                message = _host_path_problem(
                    volume.source, allowed_paths, policy.allowed_host_paths
                )
                if message:
                    problem(f"{where}.volumes[{j}]", message)
        if container.env_file is not None:
            message = _host_path_problem(
                container.env_file,
                [*allowed_paths, tuple(SECRETS_DIR.strip("/").split("/"))],
                (SECRETS_DIR, *policy.allowed_host_paths),
            )
            if message:
                problem(f"{where}.env_file", message.replace("host path", "env_file", 1))
        for j, device in enumerate(container.devices):
            message = _host_path_problem(device.host_path, allowed_paths, policy.allowed_host_paths)
            if message:
                problem(f"{where}.devices[{j}]", message)
    return problems


def image_repository(image: str) -> str:
    """The fully qualified repository of an image reference, without tag or digest.

    `nginx:1.25` -> `docker.io/library/nginx`, `acme/app` -> `docker.io/acme/app`,
    `docker.io/nginx` -> `docker.io/library/nginx`, `127.0.0.1:5000/gw@sha256:ab..` ->
    `127.0.0.1:5000/gw`.
    """
    name = image.split("@", 1)[0]
    # A `:` after the last `/` starts the tag; one before it belongs to a registry port.
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    first, sep, rest = name.partition("/")
    if not sep:
        return f"{_DEFAULT_REGISTRY}/library/{name}"
    if "." in first or ":" in first or first == "localhost" or first != first.lower():
        registry = _canonical_registry(first)
    else:
        registry, rest = _DEFAULT_REGISTRY, name
    # Docker Hub's official images live under `library/`: `docker.io/nginx` is that image too.
    if registry == _DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    return f"{registry}/{rest}"


def _canonical_registry(registry: str) -> str:
    return _DEFAULT_REGISTRY if registry == "index.docker.io" else registry


def _registry_problem(image: str, allowed: tuple[str, ...]) -> str | None:
    if not allowed:
        return None  # empty = any registry
    components = image_repository(image).split("/")
    for entry in allowed:
        wanted = [c for c in entry.split("/") if c]
        if wanted:
            wanted[0] = _canonical_registry(wanted[0])
        if wanted and components[: len(wanted)] == wanted:
            return None
    return (
        f'image "{image}" ({image_repository(image)}) is not from an allowed registry: '
        f"policy.allowed_registries is ({', '.join(allowed)})"
    )


def _normalise_path(path: str) -> tuple[str, ...] | None:
    """The components of an absolute path after `.`/`..` are applied; None if not absolute."""
    if not path.startswith("/"):
        return None
    parts: list[str] = []
    for component in path.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if parts:
                parts.pop()
            continue
        parts.append(component)
    return tuple(parts)


def _host_path_problem(
    path: str, allowed: list[tuple[str, ...]], allowed_as_written: tuple[str, ...]
) -> str | None:
    normalised = _normalise_path(path)
    if normalised is None:
        return f"host path {path} is not an absolute path"
    if any(normalised[: len(root)] == root for root in allowed):
        return None
    shown = "/" + "/".join(normalised)
    # Show what a traversal resolves to, so `/srv/../etc` is not mistaken for a path under /srv.
    subject = path if shown == path else f"{path} (= {shown})"
    if not allowed_as_written:
        return f"host path {subject} is not allowed: policy.allowed_host_paths is empty"
    return (
        f"host path {subject} is outside policy.allowed_host_paths "
        f"({', '.join(allowed_as_written)})"
    )
