# shellcheck shell=bash
# Shared by the packaging scripts; sourced, never run. Needs bash, util-linux and coreutils.
#
# Chroots that clean up after themselves: every script first re-runs itself in a private mount
# namespace (enter_private_mounts), so whatever it mounts inside a chroot (/proc, the apt cache)
# disappears when the script ends, however it ends (error, Ctrl-C, kill -9). The scripts still
# unmount in their EXIT trap and refuse to delete a tree that has anything mounted under it: a
# bind mount shares the device number of its source, so `rm --one-file-system` alone would not
# stop an rm from walking into the host's files.

PROG=${PROG:-$(basename "$0")}
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CHROOT_ENV=() # extra NAME=VALUE settings for every run_in
_MOUNTED=()
_PREPARED=()   # roots chroot_prepare changed, for chroot_release to undo

die() {
    echo "$PROG: $*" >&2
    exit 1
}

log() {
    echo "$PROG: $*" >&2
}

# usage [CODE]: the script's synopsis (its header's "#   packaging/..." block), then exit.
usage() {
    sed -n '/^#   packaging\//,/^#$/p' "$0" | sed -e 's/^#   //' -e '/^#$/d' >&2
    exit "${1:-2}"
}

# handle_help "$@": --help answers before anything needs root.
handle_help() {
    local arg
    for arg in "$@"; do
        case $arg in -h | --help) usage 0 ;; esac
    done
}

require_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (it uses chroot and mount)"
}

require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is not installed"
    done
}

# qemu_name DEBIAN_ARCH: qemu-user-static's name for it (its binfmt handler is qemu-NAME).
qemu_name() {
    case $1 in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
    armhf | armel) echo arm ;;
    i386) echo i386 ;;
    ppc64el) echo ppc64le ;;
    *) echo "$1" ;;
    esac
}

# Re-execute this script in its own mount namespace, once (children inherit the namespace).
enter_private_mounts() {
    if [ -z "${RECONCILER_PRIVATE_MOUNTS:-}" ]; then
        exec env RECONCILER_PRIVATE_MOUNTS=1 unshare --mount --propagation private -- "$0" "$@"
    fi
}

# mount_in ROOT ARGS... TARGET: mount, remembering TARGET for unmount_all.
mount_in() {
    local target=${*: -1}
    mount "${@:2}"
    _MOUNTED+=("$target")
}

unmount_all() {
    local i
    for ((i = ${#_MOUNTED[@]} - 1; i >= 0; i--)); do
        umount --lazy "${_MOUNTED[i]}" 2>/dev/null || true
    done
    _MOUNTED=()
}

# Delete a tree, but only when nothing is mounted at or under it.
remove_tree() {
    local tree=$1 real
    [ -e "$tree" ] || return 0
    real=$(realpath "$tree")
    if findmnt --list --noheadings --output TARGET |
        awk -v t="$real" '$0 == t || index($0, t "/") == 1 { found = 1 } END { exit !found }'; then
        log "not removing $tree: something is still mounted under it"
        return 1
    fi
    rm -rf --one-file-system "$tree"
}

# Extract a rootfs tarball made by base-rootfs.sh into ROOT (created, must be empty).
extract_rootfs() {
    local tarball=$1 root=$2
    [ -f "$tarball" ] || die "$tarball: no such rootfs tarball (make one with packaging/base-rootfs.sh)"
    mkdir -p "$root"
    [ -z "$(ls -A "$root")" ] || die "$root: not empty"
    tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$tarball" -C "$root"
}

# Ready ROOT for package installs: the host's DNS, no service starts, /proc, and optionally
# APT_CACHE (a host directory of .deb files, shared between builds) as its apt archive.
chroot_prepare() {
    local root=$1
    rm -f "$root/etc/resolv.conf"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    # Maintainer scripts must not start services (docker.io would start dockerd in the chroot).
    [ ! -e "$root/usr/sbin/policy-rc.d" ] || die "$root/usr/sbin/policy-rc.d exists already"
    printf '#!/bin/sh\n# packaging/lib.sh: no service starts while building\nexit 101\n' \
        >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    _PREPARED+=("$root")
    mount_in "$root" -t proc proc "$root/proc"
    if [ -n "${APT_CACHE:-}" ]; then
        mkdir -p "$APT_CACHE/partial"
        mount_in "$root" --bind "$APT_CACHE" "$root/var/cache/apt/archives"
    fi
}

# Undo chroot_prepare. The chroot keeps no resolv.conf: the image or the engine provides one.
chroot_release() {
    local root=$1 prepared
    unmount_all
    for prepared in ${_PREPARED[@]+"${_PREPARED[@]}"}; do
        if [ "$prepared" = "$root" ]; then
            rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
        fi
    done
    _PREPARED=()
}

# run_in ROOT CMD...: run CMD in ROOT with a clean, predictable environment.
run_in() {
    local root=$1
    shift
    env -i HOME=/root PATH="$CHROOT_PATH" LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        "${CHROOT_ENV[@]}" chroot "$root" "$@"
}

# apt_in ROOT ARGS...: apt-get in ROOT, quiet, without recommends, never prompting. With a
# shared APT_CACHE, one apt-get at a time (APT_CACHE_LOCK, flock): apt locks the archive
# directory and fails at once when another chroot's apt holds it (two builds side by side).
APT_CACHE_LOCK=.reconciler-build.lock
apt_in() {
    local root=$1 lock="" status=0
    shift
    if [ -n "${APT_CACHE:-}" ]; then
        exec {lock}>>"$APT_CACHE/$APT_CACHE_LOCK"
        flock "$lock"
    fi
    run_in "$root" apt-get -q -y \
        -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=0 -o APT::Sandbox::User=root \
        -o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "$@" || status=$?
    [ -z "$lock" ] || exec {lock}>&-
    return "$status"
}

# The directory holding this file: the packaging/ folder of a checkout (used by the scripts).
# shellcheck disable=SC2034
PACKAGING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
