#!/usr/bin/env bash
# Builds reconciler_VERSION_ARCH.deb from this checkout.
#
#   packaging/build-deb.sh [--base BASE.tar] [--out DIR] [--revision N] [--apt-cache DIR]
#                          [--pip-cache DIR] [--constraint FILE] [--maintainer "NAME <MAIL>"]
#                          [--homepage URL] [--version UPSTREAM] [--xz-level 0-9]
#
# The package holds the reconciler in its own virtualenv under /usr/lib/reconciler, made by the
# target's own python3 (Debian's, 3.11 on bookworm) AT that path, inside a chroot of BASE.tar
# (a rootfs from base-rootfs.sh, of the target's suite and architecture; made on the fly when
# --base is not given): a virtualenv is not relocatable (its scripts' #! lines and bytecode name
# their absolute paths), so it is built where it will run. pip installs exactly the wheels that
# packaging/constraints.txt pins by hash (--constraint: another such file), then the project
# from this checkout. Also: /usr/bin/reconciler, reconciler.service, reconciler(1), the
# template config (/usr/share/reconciler/config.yaml; postinst copies it to /etc/reconciler
# once) and a debian/copyright generated from the bundled distributions.
#
# Version: pyproject.toml's, as 0.1.0+git20261206.ed2a91623d4c-1+deb12 (commit date and id,
# revision, Debian release of the base); a commit tagged v0.1.0 builds as 0.1.0-1+deb12; a
# checkout with uncommitted changes to what is packaged adds ".dirty". Reproducible: two builds
# of one commit on one base are byte-identical (SOURCE_DATE_EPOCH is the commit's time).
#
# Needs root (chroot, mount), git and dpkg-deb; network for apt (python3-venv and binutils into
# the build chroot, unless --apt-cache holds them) and for PyPI (unless --pip-cache holds every
# wheel).
set -euo pipefail
PROG=build-deb.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
handle_help "$@"
require_root
enter_private_mounts "$@"

# The package's file modes must not depend on the caller's umask.
umask 022
checkout=$(cd "$PACKAGING_DIR/.." && pwd)
prefix=/usr/lib/reconciler
base=""
outdir=$checkout/dist
revision=1
APT_CACHE=""
pip_cache=""
constraint=$PACKAGING_DIR/constraints.txt
maintainer=""
homepage=""
upstream=""
xz_level=6 # dpkg's default; 2 is four times faster for a deb 12 % larger
while [ $# -gt 0 ]; do
    case $1 in
    --base) base=$(realpath "$2"); shift 2 ;;
    --out) outdir=$2; shift 2 ;;
    --revision) revision=$2; shift 2 ;;
    --apt-cache) APT_CACHE=$(realpath -m "$2"); shift 2 ;;
    --pip-cache) pip_cache=$(realpath -m "$2"); shift 2 ;;
    --constraint) constraint=$(realpath "$2"); shift 2 ;;
    --maintainer) maintainer=$2; shift 2 ;;
    --homepage) homepage=$2; shift 2 ;;
    --version) upstream=$2; shift 2 ;;
    --xz-level) xz_level=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (--help)" ;;
    esac
done
require_tools dpkg-deb tar findmnt gzip md5sum git python3
[ -f "$constraint" ] || die "$constraint: no such constraints file (packaging/lock-deps.sh writes one)"
mkdir -p "$outdir"
outdir=$(realpath "$outdir")

# --- version, time and people, all from the commit -------------------------------------------
git_in() { git -C "$checkout" -c safe.directory="$checkout" "$@"; }
git_in rev-parse --verify -q HEAD >/dev/null || die "$checkout: not a git checkout with a commit"
# Everything in the package is stamped with the commit's time, not the build's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git_in log -1 --format=%ct HEAD)}
# Version, Maintainer and Homepage from pyproject.toml's [project] (maintainers, urls).
mapfile -t project < <(python3 - "$checkout/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
person = (project.get("maintainers") or project.get("authors") or [{}])[0]
print(project["version"])
print(f"{person['name']} <{person['email']}>" if {"name", "email"} <= set(person) else "")
print(project.get("urls", {}).get("Homepage", ""))
PY
)
if [ -z "$upstream" ]; then
    upstream=${project[0]}
    # A snapshot unless HEAD carries the release's tag. Snapshots sort after the release they
    # follow, so the first commit after a release raises pyproject.toml's version.
    if [ "$(git_in tag --points-at HEAD | grep -Fx "v$upstream" || true)" != "v$upstream" ]; then
        upstream+=+git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$(git_in rev-parse --short=12 HEAD)
        if [ -n "$(git_in status --porcelain -- pyproject.toml README.md reconciler packaging)" ]; then
            upstream+=.dirty
        fi
    fi
fi
maintainer=${maintainer:-${project[1]}}
[ -n "$maintainer" ] || maintainer=${DEBEMAIL:+${DEBFULLNAME:-reconciler} <$DEBEMAIL>}
[ -n "$maintainer" ] || maintainer=$(git_in log -1 --format='%cn <%ce>' HEAD)
homepage=${homepage:-${project[2]}}
[ -n "$homepage" ] || log "no Homepage: set [project.urls] Homepage in pyproject.toml or --homepage"

work=$(mktemp -d "${TMPDIR:-/tmp}/reconciler-deb.XXXXXX")
root=$work/root
pkg=$work/pkg
cleanup() {
    chroot_release "$root" 2>/dev/null || true
    remove_tree "$work"
}
trap cleanup EXIT

if [ -z "$base" ]; then
    log "no --base: making one (debootstrap)"
    "$PACKAGING_DIR/base-rootfs.sh" "$work/base.tar" ${APT_CACHE:+--apt-cache "$APT_CACHE"}
    base=$work/base.tar
fi

log "build chroot from $base"
extract_rootfs "$base" "$root"
chroot_prepare "$root"
apt_in "$root" install python3-venv binutils >/dev/null
arch=$(run_in "$root" dpkg --print-architecture)
python=python$(run_in "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The Debian release in the version (+deb12): the next release's build (+deb13) sorts after it
# and replaces it on a dist-upgrade, rather than running on an orphaned python3.X.
# shellcheck disable=SC1091
release=$(. "$root/etc/os-release" && echo "${VERSION_ID:-${VERSION_CODENAME:-unknown}}")
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1.
release_part=$(printf '%s' "${upstream%%+*}" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)$/~\1\2/')
version=$release_part${upstream#"${upstream%%+*}"}-$revision+deb$release
site=$prefix/lib/$python/site-packages

mkdir -p "$root/usr/src/reconciler"
# What git tracks, so that a stray local file never lands in a package.
git_in ls-files -z -- pyproject.toml README.md reconciler |
    tar -C "$checkout" --null -T - -cf - | tar -C "$root/usr/src/reconciler" -xf -
cp "$constraint" "$root/usr/src/constraints.txt"
cp "$PACKAGING_DIR/copyright.py" "$PACKAGING_DIR/manpage.py" "$root/usr/src/"
if [ -n "$pip_cache" ]; then
    mkdir -p "$pip_cache" "$root/root/.cache/pip"
    mount_in "$root" --bind "$pip_cache" "$root/root/.cache/pip"
fi
pip_args=(--no-input --disable-pip-version-check --quiet --no-compile)
# The CA bundle the host trusts (PIP_CERT, else the system's): a TLS-inspecting proxy in front
# of PyPI, as on many company networks, is trusted by the host, not by pip's own bundle.
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$host_ca" ]; then
    cp "$host_ca" "$root/usr/src/host-ca.crt"
    CHROOT_ENV+=(PIP_CERT=/usr/src/host-ca.crt)
fi
# A private index or PyPI mirror, as the caller's pip would use it.
[ -z "${PIP_INDEX_URL:-}" ] || CHROOT_ENV+=(PIP_INDEX_URL="$PIP_INDEX_URL")
# One hash seed, one bytecode (the order of set constants); the commit's time everywhere.
CHROOT_ENV+=(PYTHONHASHSEED=0 SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH")

# /usr/bin/python3.X, not python3: the venv links to the interpreter it was made with, and this
# one stays when a later Debian moves python3 to another version (Depends pins it).
log "virtualenv at $prefix with $python"
run_in "$root" "/usr/bin/$python" -m venv "$prefix"
# Exactly the locked wheels (every hash checked), then the reconciler itself, built with the
# locked setuptools; `pip check` fails when pyproject.toml asks for what the lock lacks.
run_in "$root" "$prefix/bin/pip" install "${pip_args[@]}" --require-hashes --no-deps \
    --only-binary=:all: --requirement /usr/src/constraints.txt
run_in "$root" "$prefix/bin/pip" install "${pip_args[@]}" --no-deps --no-build-isolation \
    --no-index /usr/src/reconciler
if ! run_in "$root" "$prefix/bin/pip" check >"$work/pip-check" 2>&1; then
    cat "$work/pip-check" >&2
    die "$(basename "$constraint") does not satisfy pyproject.toml: run packaging/lock-deps.sh"
fi
# A device runs the reconciler, it installs nothing: pip and setuptools stay out.
run_in "$root" "$prefix/bin/pip" uninstall --yes --quiet pip setuptools

log "pruning, stripping and byte-compiling"
venv=$root$prefix
# Activation scripts and the dependencies' console scripts: only `reconciler` is run.
find "$venv/bin" -mindepth 1 ! -name reconciler ! -name 'python*' -delete
# Upstream test suites are not run on a device; pip's build leftovers neither.
find "$venv/lib" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
find "$venv" -name .gitignore -delete
rmdir "$venv/include/$python" "$venv/include" 2>/dev/null || true
# Debug symbols are for debuggers, not devices (a fifth of the package); as dh_strip does.
run_in "$root" find "$prefix" -type f -name '*.so*' -exec strip --remove-section=.comment \
    --remove-section=.note --strip-unneeded {} +
# What the extension modules link: the C library's newest symbol version decides Depends.
glibc=$(run_in "$root" find "$prefix" -type f -name '*.so*' -exec objdump -T {} + |
    grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
needs_libgcc=$(run_in "$root" find "$prefix" -type f -name '*.so*' -exec objdump -p {} + |
    grep -c 'NEEDED *libgcc_s\.so\.1' || true)
libgcc=""
[ "$needs_libgcc" = 0 ] || libgcc=" libgcc-s1,"
# Every extension module still loads after stripping.
run_in "$root" "$prefix/bin/python" -I - "$site" <<'PY'
import importlib, pathlib, sys
site = pathlib.Path(sys.argv[1])
for so in sorted(site.rglob("*.so")):
    parts = so.relative_to(site).parts
    if any(part.endswith((".libs", ".dist-info")) for part in parts):
        continue
    importlib.import_module(".".join(parts[:-1] + (parts[-1].split(".")[0],)))
PY
# Bytecode that names no source time (unchecked-hash), so identical on every build; written
# now, so nothing is written there at run time (dpkg would leave such files behind).
run_in "$root" "$prefix/bin/python" -m compileall -q -f -j 1 \
    --invalidation-mode unchecked-hash "$prefix/lib" >/dev/null
run_in "$root" "$prefix/bin/reconciler" --version >/dev/null
# The release whose python3.X this virtualenv runs on (reconciler.service warns on another).
echo "$release" >"$venv/debian-release"

log "copyright and man page"
run_in "$root" "$prefix/bin/python" -I /usr/src/copyright.py "$prefix" >"$work/copyright"
run_in "$root" "$prefix/bin/python" -I /usr/src/manpage.py "$prefix/bin/reconciler" \
    "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" >"$work/reconciler.1"
chroot_release "$root"

log "package tree"
mkdir -p "$pkg/usr/lib" "$pkg/usr/bin" "$pkg/DEBIAN"
cp -a "$venv" "$pkg$prefix"
compgen -G "$pkg$site/reconciler/cli/__pycache__/__init__.*.pyc" >/dev/null ||
    die "the virtualenv holds no byte-compiled modules"
# Relative links, so that the tree also works unpacked elsewhere (a chroot, an image build).
ln -s ../lib/reconciler/bin/reconciler "$pkg/usr/bin/reconciler"
ln -sfn "../../../bin/$python" "$pkg$prefix/bin/$python"
install -D -m 644 "$PACKAGING_DIR/reconciler.service" "$pkg/lib/systemd/system/reconciler.service"
install -D -m 644 "$PACKAGING_DIR/config.yaml" "$pkg/usr/share/reconciler/config.yaml"
install -d -m 755 "$pkg/etc/reconciler/labels.d"
install -D -m 644 "$work/reconciler.1" "$pkg/usr/share/man/man1/reconciler.1"
gzip -9n "$pkg/usr/share/man/man1/reconciler.1"
doc=$pkg/usr/share/doc/reconciler
install -D -m 644 "$work/copyright" "$doc/copyright"
install -m 644 "$PACKAGING_DIR/README.md" "$doc/README.packaging.md"
install -m 644 "$checkout/README.md" "$doc/README.md"
{
    echo "reconciler ($version) unstable; urgency=medium"
    echo
    echo "  * Built by packaging/build-deb.sh from commit"
    echo "    $(git_in rev-parse HEAD)."
    echo
    echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$doc/changelog.Debian"
gzip -9n "$doc/changelog.Debian"
chmod 644 "$doc/changelog.Debian.gz"

install -m 755 "$PACKAGING_DIR/debian/postinst" "$PACKAGING_DIR/debian/prerm" \
    "$PACKAGING_DIR/debian/postrm" "$pkg/DEBIAN/"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
# KiB as dpkg-gencontrol counts them (each file rounded up, 1 per directory or link); du's
# block counts depend on the file system's allocation, which differs between two builds.
installed_size=$(find "$pkg" -path "$pkg/DEBIAN" -prune -o -printf '%y %s\n' |
    awk '$1 == "f" { kib += int(($2 + 1023) / 1024); next } { kib += 1 } END { print kib }')
{
    echo "Package: reconciler"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $installed_size"
    echo "Depends: $python, libc6 (>= $glibc),$libgcc git," \
        "ca-certificates, procps, init-system-helpers (>= 1.54~)"
    # Any engine will do; docker-ce's packages conflict with docker.io, so it must be named.
    echo "Recommends: docker.io | docker-ce | podman, iproute2"
    echo "Suggests: openssh-client"
    echo "Section: admin"
    echo "Priority: optional"
    [ -z "$homepage" ] || echo "Homepage: $homepage"
    echo "Description: GitOps pull-based reconciler for devices"
    echo " Polls a Git repository of app manifests, keeps the apps whose label"
    echo " selectors match this device, checks that a trusted signer released exactly"
    echo " those bytes, and drives the local Docker Engine (or Podman's"
    echo " Docker-compatible socket) to that state, rolling back unhealthy changes."
    echo " ."
    echo " The reconciler lives in its own virtualenv under $prefix, run by"
    echo " /usr/bin/reconciler and reconciler.service. Fill in"
    echo " /etc/reconciler/config.yaml (source.url, trust) first."
} >"$pkg/DEBIAN/control"
# The same bytes from the same inputs: no time stamp later than the commit's.
find "$pkg" -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch --no-dereference -d "@$SOURCE_DATE_EPOCH"

deb=$outdir/reconciler_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz -z"$xz_level" --build "$pkg" "$deb.partial" >/dev/null
mv "$deb.partial" "$deb"
log "wrote $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
