#!/usr/bin/env bash
# A minimal Debian root filesystem as a tarball: the base that build-deb.sh builds in, that
# image/build-rootfs.sh bakes a device image from, and that `docker import` turns into a base
# image where no registry can be reached (packaging/README.md).
#
#   packaging/base-rootfs.sh OUT.tar [--suite bookworm] [--arch ARCH] [--mirror URL]
#                            [--apt-cache DIR]
#
# What it holds: debootstrap's minbase variant (dpkg, apt, a shell; no init, no python), apt
# sources for SUITE, SUITE-updates and SUITE-security, and their package lists (so a later
# `apt-get install` from a warm --apt-cache needs no network). No resolv.conf, no hostname, an
# empty machine-id: whoever uses it provides those. Needs root and debootstrap. --arch defaults
# to the host's; a foreign one (arm64 on an amd64 host) runs its programs through qemu-user-static
# and a registered binfmt handler (binfmt-support; packaging/README.md, "arm64").
set -euo pipefail
PROG=base-rootfs.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
handle_help "$@"
require_root
enter_private_mounts "$@"

out=""
suite=bookworm
mirror=http://deb.debian.org/debian
arch=$(dpkg --print-architecture)
APT_CACHE=""
while [ $# -gt 0 ]; do
    case $1 in
    --suite) suite=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --apt-cache) APT_CACHE=$(realpath -m "$2"); shift 2 ;;
    -h | --help) usage 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
    esac
done
[ -n "$out" ] || usage
require_tools debootstrap tar findmnt
foreign=()
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    # Its first stage unpacks, the second runs the target's maintainer scripts: through qemu.
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch")" ] ||
        die "no binfmt handler for $arch programs (apt-get install qemu-user-static binfmt-support)"
    foreign=(--foreign)
fi

out=$(realpath -m "$out")
work=$(mktemp -d "${TMPDIR:-/tmp}/reconciler-base.XXXXXX")
root=$work/root
cleanup() {
    chroot_release "$root" 2>/dev/null || true
    remove_tree "$work"
}
trap cleanup EXIT

log "debootstrap $suite ($arch, minbase) from $mirror"
cache_args=()
if [ -n "$APT_CACHE" ]; then
    mkdir -p "$APT_CACHE"
    cache_args=(--cache-dir="$APT_CACHE")
fi
{
    debootstrap --variant=minbase --arch="$arch" ${foreign[@]+"${foreign[@]}"} \
        "${cache_args[@]}" "$suite" "$root" "$mirror" &&
        if [ ${#foreign[@]} -gt 0 ]; then
            chroot "$root" /debootstrap/debootstrap --second-stage
        fi
} >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
}

# The security archive sits beside the main one on deb.debian.org and on most mirrors.
security=${mirror%/debian}/debian-security
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
chroot_prepare "$root"
apt_in "$root" update >/dev/null
# Security and point-release fixes that came out after the suite's release.
apt_in "$root" dist-upgrade >/dev/null
chroot_release "$root"

# debootstrap leaves its .debs behind (they live on in --apt-cache when given).
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
find "$root/var/log" -type f -exec truncate --size=0 {} +
rm -f "$root/etc/hostname"
: >"$root/etc/machine-id"

tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$out.partial" .
mv "$out.partial" "$out"
log "wrote $out ($(du -h "$out" | cut -f1))"
