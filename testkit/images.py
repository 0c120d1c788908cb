"""Tiny test images built FROM scratch with the host's static busybox, no registry needed.

Owns: `ImageFactory.build` (busybox + extra text files + CMD + optional HEALTHCHECK, built through
the docker SDK's classic builder from an in-memory tar context) and the ready-made `httpd`,
`exits` and `sleeper` images. Builds are cached by content: the returned reference carries a
hash of the spec, so the same spec is built once (and reused across sessions while the engine
keeps it), and parallel sessions never move each other's tags.

Must not: pull anything (FROM scratch only); bind anything but 127.0.0.1 (images bind inside
their container; publishing is the caller's business).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

BUSYBOX = Path("/bin/busybox")
REPO_PREFIX = "reconciler-test/"
_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# A shell as PID 1 that exits on SIGTERM: busybox httpd/sleep as PID 1 ignore it, so every
# `docker stop` would wait out its full timeout.
_TRAP = "trap 'exit 0' TERM; {} & wait"


class BusyboxUnusable(Exception):
    """The host's /bin/busybox is missing or dynamically linked (install busybox-static)."""


def check_busybox(path: Path = BUSYBOX) -> bytes:
    """The busybox binary, if it is a static ELF (a dynamic one cannot run FROM scratch)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BusyboxUnusable(f"{path}: {exc.strerror}; install busybox-static") from exc
    if _has_interpreter(data):
        raise BusyboxUnusable(f"{path}: dynamically linked; install busybox-static")
    return data


# What a build says when another worker removed an image its cache pointed at, mid-build.
_CACHE_RACES = ("unable to find image", "layer not known")


class ImageFactory:
    """Builds test images on one engine; one instance per test session."""

    def __init__(self, client: docker.DockerClient, *, busybox: bytes) -> None:
        self._client = client
        self._busybox = busybox
        self._busybox_sha = hashlib.sha256(busybox).hexdigest()
        self._built: dict[str, str] = {}  # spec hash -> reference

    def build(
        self,
        tag: str,
        *,
        cmd: list[str],
        files: dict[str, str] | None = None,
        healthcheck: list[str] | None = None,
    ) -> str:
        """Build (or reuse) the image and return its reference `reconciler-test/TAG:SPECHASH`.

        `tag` is a repository name ("web", "gw/api"); if it has its own ":tag", that exact
        reference is used instead of the spec hash (and may then be moved by a parallel run).
        `files` maps absolute paths in the image to text content; `healthcheck` is an exec-form
        command checked every second.
        """
        dockerfile = self._dockerfile(cmd=cmd, files=files or {}, healthcheck=healthcheck)
        spec = json.dumps(
            {"dockerfile": dockerfile, "files": files or {}, "busybox": self._busybox_sha},
            sort_keys=True,
        )
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        reference = _reference(tag, digest)
        cache_key = f"{reference}\0{digest}"
        if cache_key in self._built and self._exists(reference):
            return reference
        if ":" not in tag and self._exists(reference):
            self._built[cache_key] = reference  # built by an earlier session on this engine
            return reference
        from docker.errors import BuildError  # lazily, as docker itself is imported here

        for attempt in (1, 2):
            context = self._context(dockerfile, files or {})
            try:
                self._client.images.build(
                    fileobj=context,
                    custom_context=True,
                    tag=reference,
                    rm=True,
                    forcerm=True,
                    nocache=attempt > 1,
                    labels={"reconciler-test.spec": digest},
                )
                break
            except BuildError as exc:
                # A test on another worker removed an image this build's cache pointed at
                # (Docker: "unable to find image sha256:...", Podman: "getting top layer info:
                # layer not known"): build once more, without the cache.
                if attempt > 1 or not any(race in str(exc) for race in _CACHE_RACES):
                    raise
        self._built[cache_key] = reference
        return reference

    def httpd(self, tag: str, body: str) -> str:
        """Serves `body` at http://CONTAINER:80/index.html (busybox httpd, /www)."""
        return self.build(
            tag,
            cmd=["sh", "-c", _TRAP.format("httpd -f -p 80 -h /www")],
            files={"/www/index.html": body},
        )

    def exits(self, tag: str, code: int = 1) -> str:
        """Exits with `code` at once."""
        return self.build(tag, cmd=["sh", "-c", f"exit {int(code)}"])

    def sleeper(self, tag: str) -> str:
        """Runs forever, listens nowhere, stops at once on SIGTERM."""
        return self.build(tag, cmd=["sh", "-c", _TRAP.format("sleep 100000")])

    # --- internals -----------------------------------------------------------------------------

    def _exists(self, reference: str) -> bool:
        import docker.errors

        try:
            self._client.images.get(reference)
        except docker.errors.ImageNotFound:
            return False
        return True

    @staticmethod
    def _dockerfile(
        *, cmd: Sequence[str], files: Mapping[str, str], healthcheck: Sequence[str] | None
    ) -> str:
        if not cmd:
            raise ValueError("cmd: expected at least one argument")
        lines = [
            "FROM scratch",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        ]
        if files:
            lines.append("COPY rootfs/ /")
        if healthcheck:
            lines.append(
                "HEALTHCHECK --interval=1s --timeout=2s --retries=2 "
                f"CMD {json.dumps(list(healthcheck))}"
            )
        lines.append(f"CMD {json.dumps(list(cmd))}")
        return "\n".join(lines) + "\n"

    def _context(self, dockerfile: str, files: Mapping[str, str]) -> io.BytesIO:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            _add(tar, "Dockerfile", dockerfile.encode())
            _add(tar, "busybox", self._busybox, mode=0o755)
            dirs: set[str] = set()
            for image_path, text in sorted(files.items()):
                relative = _relative(image_path)
                for parent in reversed(PurePosixPath(relative).parents):
                    name = "rootfs" if str(parent) == "." else f"rootfs/{parent}"
                    if name not in dirs:
                        dirs.add(name)
                        info = tarfile.TarInfo(name)
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                _add(tar, f"rootfs/{relative}", text.encode())
        buffer.seek(0)
        return buffer


def _reference(tag: str, digest: str) -> str:
    name, _, explicit = tag.partition(":")
    full = name if name.startswith(REPO_PREFIX) else REPO_PREFIX + name
    if not _NAME.match(full) or (explicit and not _TAG.match(explicit)):
        raise ValueError(f"tag: expected a lowercase image name with an optional :tag, got {tag!r}")
    return f"{full}:{explicit or digest}"


def _relative(image_path: str) -> str:
    path = PurePosixPath(image_path)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(
            f"files: expected an absolute file path inside the image, got {image_path!r}"
        )
    return str(path.relative_to("/"))


def _add(tar: tarfile.TarFile, name: str, data: bytes, *, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _has_interpreter(elf: bytes) -> bool:
    """True when the ELF has a PT_INTERP program header (i.e. is dynamically linked)."""
    if elf[:4] != b"\x7fELF" or elf[4] not in (1, 2):
        raise BusyboxUnusable(f"{BUSYBOX}: not an ELF executable")
    is64, endian = elf[4] == 2, "<" if elf[5] == 1 else ">"
    if is64:
        phoff, phentsize, phnum = (
            struct.unpack_from(f"{endian}Q", elf, 0x20)[0],
            *struct.unpack_from(f"{endian}HH", elf, 0x36),
        )
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(f"{endian}I", elf, 0x1C)[0],
            *struct.unpack_from(f"{endian}HH", elf, 0x2A),
        )
    pt_interp = 3
    return any(
        struct.unpack_from(f"{endian}I", elf, phoff + i * phentsize)[0] == pt_interp
        for i in range(phnum)
    )
