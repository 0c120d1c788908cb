#!/usr/bin/env bash
# Builds reconciler_VERSION-REVISION_ARCH.deb from this checkout.
#
#   packaging/build-deb.sh [--base BASE.tar] [--out DIR] [--revision N] [--apt-cache DIR]
#                          [--pip-cache DIR] [--constraint FILE] [--maintainer "NAME <MAIL>"]
#                          [--xz-level 0-9]
#
# The package holds the reconciler in its own virtualenv under /opt/reconciler, made by the
# target's own python3 (Debian's, 3.11 on bookworm) AT that path, inside a chroot of BASE.tar
# (a rootfs from base-rootfs.sh; made on the fly when --base is not given): a virtualenv is not
# relocatable (its scripts' #! lines and bytecode name their absolute paths), so it is built
# where it will run. pip installs the project from this checkout plus its dependencies from
# PyPI (pin them with --constraint). Also: /usr/bin/reconciler, reconciler.service and the
# default /etc/reconciler/config.yaml as a conffile.
#
# Needs root (chroot, mount) and dpkg-deb; network for apt (python3-venv into the build chroot,
# unless --apt-cache holds it) and for PyPI (unless --pip-cache holds every wheel).
set -euo pipefail
PROG=build-deb.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
handle_help "$@"
require_root
enter_private_mounts "$@"


checkout=$(cd "$PACKAGING_DIR/.." && pwd)
base=""
outdir=$checkout/dist
revision=1
APT_CACHE=""
pip_cache=""
constraint=""
maintainer="Reconciler maintainers <reconciler@example.invalid>"
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
    --xz-level) xz_level=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (--help)" ;;
    esac
done
require_tools dpkg-deb tar findmnt gzip md5sum
mkdir -p "$outdir"
outdir=$(realpath "$outdir")

# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1.
upstream=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$checkout/pyproject.toml" | head -n 1)
[ -n "$upstream" ] || die "no version in $checkout/pyproject.toml"
version=$(printf '%s' "$upstream" | sed -E 's/\.?(a|b|rc|dev)([0-9]*)/~\1\2/')-$revision

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
apt_in "$root" install python3-venv >/dev/null
arch=$(run_in "$root" dpkg --print-architecture)
python=python$(run_in "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

mkdir -p "$root/usr/src/reconciler"
tar -C "$checkout" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
    pyproject.toml README.md reconciler | tar -C "$root/usr/src/reconciler" -xf -
if [ -n "$pip_cache" ]; then
    mkdir -p "$pip_cache" "$root/root/.cache/pip"
    mount_in "$root" --bind "$pip_cache" "$root/root/.cache/pip"
fi
pip_args=(--no-input --disable-pip-version-check --quiet)
# The CA bundle the host trusts (PIP_CERT, else the system's): a TLS-inspecting proxy in front
# of PyPI, as on many company networks, is trusted by the host, not by pip's own bundle.
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$host_ca" ]; then
    cp "$host_ca" "$root/usr/src/host-ca.crt"
    CHROOT_ENV+=(PIP_CERT=/usr/src/host-ca.crt)
fi
# A private index or PyPI mirror, as the caller's pip would use it.
[ -z "${PIP_INDEX_URL:-}" ] || CHROOT_ENV+=(PIP_INDEX_URL="$PIP_INDEX_URL")
if [ -n "$constraint" ]; then
    cp "$constraint" "$root/usr/src/constraints.txt"
    pip_args+=(--constraint /usr/src/constraints.txt)
fi

# /usr/bin/python3.X, not python3: the venv links to the interpreter it was made with, and this
# one stays when a later Debian moves python3 to another version (Depends pins it).
log "virtualenv at /opt/reconciler with $python"
run_in "$root" "/usr/bin/$python" -m venv /opt/reconciler
run_in "$root" /opt/reconciler/bin/pip install "${pip_args[@]}" /usr/src/reconciler
# A device runs the reconciler, it installs nothing: pip and setuptools stay out.
run_in "$root" /opt/reconciler/bin/pip uninstall --yes --quiet pip setuptools
run_in "$root" /opt/reconciler/bin/reconciler --version >/dev/null
chroot_release "$root"

log "package tree"
mkdir -p "$pkg/opt" "$pkg/usr/bin" "$pkg/DEBIAN"
cp -a "$root/opt/reconciler" "$pkg/opt/reconciler"
# pip byte-compiled every module at its final path, so nothing is written there at run time
# (which would leave files behind that dpkg does not know, on removal).
compgen -G "$pkg/opt/reconciler/lib/$python/site-packages/reconciler/__pycache__/cli.*.pyc" \
    >/dev/null || die "the virtualenv holds no byte-compiled modules"
ln -s /opt/reconciler/bin/reconciler "$pkg/usr/bin/reconciler"
install -D -m 644 "$PACKAGING_DIR/reconciler.service" "$pkg/lib/systemd/system/reconciler.service"
install -D -m 644 "$PACKAGING_DIR/config.yaml" "$pkg/etc/reconciler/config.yaml"
install -d -m 755 "$pkg/etc/reconciler/labels.d"
doc=$pkg/usr/share/doc/reconciler
install -D -m 644 "$PACKAGING_DIR/debian/copyright" "$doc/copyright"
install -m 644 "$PACKAGING_DIR/README.md" "$doc/README.packaging.md"
install -m 644 "$checkout/README.md" "$doc/README.md"
cat >"$work/changelog.Debian" <<EOF
reconciler ($version) unstable; urgency=medium

  * Built from the reconciler checkout by packaging/build-deb.sh.

 -- $maintainer  $(date -R)
EOF
gzip -9n -c "$work/changelog.Debian" >"$doc/changelog.Debian.gz"
chmod 644 "$doc/changelog.Debian.gz"

install -m 755 "$PACKAGING_DIR/debian/postinst" "$PACKAGING_DIR/debian/prerm" \
    "$PACKAGING_DIR/debian/postrm" "$pkg/DEBIAN/"
echo /etc/reconciler/config.yaml >"$pkg/DEBIAN/conffiles"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: reconciler
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $python, git, ca-certificates, procps, init-system-helpers (>= 1.54~)
Recommends: docker.io | podman, iproute2
Suggests: openssh-client
Section: admin
Priority: optional
Description: GitOps pull-based reconciler for devices
 Polls a Git repository of app manifests, keeps the apps whose label
 selectors match this device, checks that a trusted signer released exactly
 those bytes, and drives the local Docker Engine (or Podman's
 Docker-compatible socket) to that state, rolling back unhealthy changes.
 .
 The reconciler lives in its own virtualenv under /opt/reconciler, run by
 /usr/bin/reconciler and reconciler.service. The default
 /etc/reconciler/config.yaml must be filled in (source.url, trust) first.
EOF

deb=$outdir/reconciler_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz -z"$xz_level" --build "$pkg" "$deb.partial" >/dev/null
mv "$deb.partial" "$deb"
log "wrote $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
