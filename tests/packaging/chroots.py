"""Debian root file systems for the packaging tests: a cached base, and chroots into copies of it.

Owns: the test cache under /var/cache/reconciler-test (RECONCILER_TEST_CACHE moves it): the base
rootfs tarball made by packaging/base-rootfs.sh, keyed by suite, architecture and the script's
hash and rebuilt after 30 days; the apt archive of downloaded .debs and the pip cache that the
packaging scripts share between runs, so that a warm run downloads nothing. `Chroot` runs a
command inside an extracted copy, each call in its own mount namespace: what it mounts there
(bind mounts, /proc) vanishes when the command ends, however it ends.

Must not: leave a mount behind, or delete a tree with anything mounted under it (a bind mount
of a host directory would take the host's files along).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
SUITE = "bookworm"
CACHE_ROOT = Path(os.environ.get("RECONCILER_TEST_CACHE") or "/var/cache/reconciler-test")
BASE_MAX_AGE = 30 * 86400  # then the suite's point releases have moved on: bootstrap anew
TOOLS = ("debootstrap", "dpkg-deb", "unshare", "chroot", "findmnt", "tar")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_CACHE_LOCK = ".reconciler-build.lock"  # as packaging/lib.sh names it

# Run by `unshare --mount` as: sh -c ENTER sh ROOT [SRC DST KIND]... -- ARGV...
# KIND is "dir" or "file" (a bind mount needs a target of the same kind).
_ENTER = r"""
set -eu
root=$1; shift
while [ "$1" != -- ]; do
    src=$1; dst=$root$2; kind=$3; shift 3
    if [ "$kind" = dir ]; then
        mkdir -p "$dst"
    else
        mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"
    fi
    mount --bind "$src" "$dst"
done
shift
if [ "${WITH_PROC:-0}" = 1 ]; then mount -t proc proc "$root/proc"; fi
exec chroot "$root" "$@"
"""


class PackagingUnavailable(Exception):
    """This machine cannot build packages or chroots (not root, a tool missing)."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def check_host() -> None:
    """Raise PackagingUnavailable unless root with every tool the packaging scripts need."""
    if os.geteuid() != 0:
        raise PackagingUnavailable("packaging tests need root (chroot, mount, dpkg)")
    if missing := missing_tools():
        raise PackagingUnavailable(
            f"missing {', '.join(missing)} (scripts/install.sh installs them as root)"
        )


def architecture() -> str:
    result = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def apt_cache(arch: str | None = None) -> Path:
    """Downloaded .debs, shared by every chroot the tests and scripts make."""
    path = CACHE_ROOT / "apt" / f"{SUITE}-{arch or architecture()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_cache() -> Path:
    path = CACHE_ROOT / "pip"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive across processes: parallel sessions build one base, not two."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_tarball(*, arch: str | None = None, timeout: float = 900) -> Path:
    """The cached base rootfs of SUITE for this architecture (or `arch`), made on first use
    (~35 s; a foreign architecture runs under qemu-user: ~15 min)."""
    script = PACKAGING / "base-rootfs.sh"
    key = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    directory = CACHE_ROOT / "rootfs"
    arch = arch or architecture()
    prefix = f"{SUITE}-{arch}-"
    path = directory / f"{prefix}{key}.tar"
    with _locked(directory / ".lock"):
        if path.exists() and time.time() - path.stat().st_mtime < BASE_MAX_AGE:
            return path
        result = subprocess.run(
            [
                *(str(script), str(path), "--suite", SUITE, "--arch", arch),
                *("--apt-cache", str(apt_cache(arch))),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"base-rootfs.sh failed ({result.returncode}):\n{result.stderr}")
        for old in directory.glob(f"{prefix}*.tar"):
            if old != path:
                old.unlink()
    return path


def base_key(tarball: Path) -> str:
    """A short name for one base tarball (its file name carries the script hash)."""
    return tarball.stem


@dataclass(frozen=True)
class Bind:
    """Host path `source` mounted at `target` inside the chroot (the same path by default)."""

    source: Path
    target: str = ""

    @property
    def inside(self) -> str:
        return self.target or str(self.source)


@dataclass(frozen=True)
class Chroot:
    root: Path
    arch: str | None = None  # None: the host's

    @classmethod
    def extract(cls, tarball: Path, root: Path, *, arch: str | None = None) -> Chroot:
        root.mkdir(parents=True)
        subprocess.run(
            ["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)],
            check=True,
            timeout=300,
        )
        return cls(root, arch)

    def run(
        self,
        *argv: str,
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        proc: bool = False,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside, with a clean environment plus `env`; the result, never raising."""
        mounts: list[str] = []
        for bind in binds:
            kind = "dir" if bind.source.is_dir() else "file"
            mounts += [str(bind.source), bind.inside, kind]
        environment = {
            "PATH": CHROOT_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "WITH_PROC": "1" if proc else "0",
            **(env or {}),
        }
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                _ENTER,
                "sh",
                str(self.root),
                *mounts,
                "--",
                *argv,
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def apt_get(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """apt-get in the chroot with the shared apt archive and the host's DNS (cold cache),
        one at a time with the packaging scripts' (lib.sh, APT_CACHE_LOCK): apt fails at once
        when another apt holds the archive directory."""
        with _locked(apt_cache(self.arch) / APT_CACHE_LOCK):
            return self._apt_get(*args, timeout=timeout)

    def _apt_get(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self.run(
            "apt-get",
            "-q",
            "-y",
            "-o",
            "Dpkg::Use-Pty=0",
            "-o",
            "APT::Sandbox::User=root",
            *args,
            binds=(
                Bind(apt_cache(self.arch), "/var/cache/apt/archives"),
                Bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf"),
            ),
            timeout=timeout,
        )

    def files(self, *, skip: Sequence[str] = ()) -> set[str]:
        """Every path in the tree, relative and "/"-rooted, but not under `skip` prefixes."""
        found: set[str] = set()
        top = str(self.root)
        for directory, subdirs, names in os.walk(top):
            for name in list(subdirs):
                path = "/" + os.path.relpath(os.path.join(directory, name), top)
                if _under(path, skip):
                    subdirs.remove(name)  # os.walk then does not descend into it
                else:
                    found.add(path)
            for name in names:
                path = "/" + os.path.relpath(os.path.join(directory, name), top)
                if not _under(path, skip):
                    found.add(path)
        return found

    def remove(self) -> None:
        """Delete the tree; refuses while anything is mounted under it."""
        if mounted := mounts_under(self.root):
            raise RuntimeError(f"not removing {self.root}: mounted under it: {mounted}")
        shutil.rmtree(self.root, ignore_errors=True)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def mounts_under(tree: Path) -> list[str]:
    """Mount points at or under `tree`, as this process sees them."""
    real = str(tree.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == real or target.startswith(real + "/"):
            found.append(target)
    return found
