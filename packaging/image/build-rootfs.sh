#!/usr/bin/env bash
# Bakes a device's root filesystem into a directory: Debian with systemd, the container engine,
# the reconciler package, its config, trust root and labels, reconciler.service enabled.
#
#   packaging/image/build-rootfs.sh --out DIR --deb reconciler_*.deb --config config.yaml
#       [--trusted-root trusted_root.json] [--labels labels.yaml]... [--hostname NAME]
#       [--base BASE.tar] [--apt-cache DIR] [--packages "PKG ..."] [--no-kernel]
#       [--root-label LABEL] [--lab] [--engine docker|podman]
#
# "Bootable-ready": init (systemd), a kernel and initramfs (linux-image-ARCH; --no-kernel for
# a container or a board whose kernel comes from elsewhere), an fstab naming the root file
# system by LABEL (default "rootfs"), DHCP on every wired interface (systemd-networkd), DNS
# (systemd-resolved), time sync (systemd-timesyncd: signature expiry and sigstore's
# certificates are judged by the clock), the engine: Docker (docker.io, the default) or, with
# --engine podman, Podman (podman, netavark, aardvark-dns) with podman.socket (the API the
# reconciler drives; the config must set runtime.docker_host: unix:///run/podman/podman.sock)
# and podman-restart.service (Podman applies restart policies after a reboot only through
# it). Not included: a bootloader and a
# partition table, which depend on the board; packaging/README.md shows how to turn DIR into a
# disk image. Every device gets its own machine-id on first boot.
#
# The config is checked with the reconciler itself before anything else is installed (exit 2
# and every problem when invalid); a config with trust.allow_unsigned is refused without --lab.
# --labels files land in /etc/reconciler/labels.d/ (the config must name that labels_dir),
# in the order given. Needs root; network for apt unless --apt-cache holds every package.
set -euo pipefail
PROG=build-rootfs.sh
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(dirname "$0")/../lib.sh"
handle_help "$@"
require_root
enter_private_mounts "$@"


out=""
deb=""
config=""
trusted_root=""
labels=()
hostname=device
base=""
APT_CACHE=""
extra_packages=""
kernel=yes
root_label=rootfs
lab=no
engine=docker
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --deb) deb=$(realpath "$2"); shift 2 ;;
    --config) config=$(realpath "$2"); shift 2 ;;
    --trusted-root) trusted_root=$(realpath "$2"); shift 2 ;;
    --labels) labels+=("$(realpath "$2")"); shift 2 ;;
    --hostname) hostname=$2; shift 2 ;;
    --base) base=$(realpath "$2"); shift 2 ;;
    --apt-cache) APT_CACHE=$(realpath -m "$2"); shift 2 ;;
    --packages) extra_packages=$2; shift 2 ;;
    --no-kernel) kernel=no; shift ;;
    --root-label) root_label=$2; shift 2 ;;
    --lab) lab=yes; shift ;;
    --engine) engine=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (--help)" ;;
    esac
done
if [ -z "$out" ] || [ -z "$deb" ] || [ -z "$config" ]; then
    usage
fi
for file in "$deb" "$config" ${trusted_root:+"$trusted_root"} ${labels[@]+"${labels[@]}"}; do
    [ -f "$file" ] || die "$file: no such file"
done
case $engine in
docker) engine_packages=(docker.io) engine_units=(docker.service) ;;
podman)
    engine_packages=(podman netavark aardvark-dns)
    engine_units=(podman.socket podman-restart.service)
    socket=/run/podman/podman.sock
    ;;
*) die "--engine $engine: docker or podman" ;;
esac
[[ $hostname =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--hostname $hostname: not a DNS label"
require_tools tar findmnt
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
    die "$out: exists and is not empty"
fi
mkdir -p "$out"
root=$(realpath "$out")
work=$(mktemp -d "${TMPDIR:-/tmp}/reconciler-image.XXXXXX")
finished=no
cleanup() {
    chroot_release "$root" 2>/dev/null || true
    [ "$finished" = yes ] || remove_tree "$root" || true
    remove_tree "$work"
}
trap cleanup EXIT

if [ -z "$base" ]; then
    log "no --base: making one (debootstrap)"
    "$PACKAGING_DIR/base-rootfs.sh" "$work/base.tar" ${APT_CACHE:+--apt-cache "$APT_CACHE"}
    base=$work/base.tar
fi
rmdir "$root"
extract_rootfs "$base" "$root"
arch=$(run_in "$root" dpkg --print-architecture)
chroot_prepare "$root"

# The reconciler first: it checks the config before the long installs.
log "installing $(basename "$deb")"
cp "$deb" "$root/tmp/reconciler.deb"
apt_in "$root" install /tmp/reconciler.deb >/dev/null
rm -f "$root/tmp/reconciler.deb"
install -m 644 "$config" "$root/etc/reconciler/config.yaml"
if [ -n "$trusted_root" ]; then
    install -m 644 "$trusted_root" "$root/etc/reconciler/trusted_root.json"
fi
install -d -m 755 "$root/etc/reconciler/labels.d"
n=10
for file in ${labels[@]+"${labels[@]}"}; do
    install -m 644 "$file" "$root/etc/reconciler/labels.d/$n-$(basename "$file" .yaml).yaml"
    n=$((n + 10))
done

log "checking the config with the reconciler"
# Prints: allow_unsigned, trusted_root, labels_dir, labels. Exit 2 with every problem if bad.
check=$(run_in "$root" /usr/lib/reconciler/bin/python -c '
import sys
from reconciler import errors
from reconciler.device import wiring
try:
    s = wiring.load_settings("/etc/reconciler/config.yaml")
except errors.SettingsError as exc:
    print("\n".join(f"  {p}" for p in exc.problems), file=sys.stderr)
    sys.exit(2)
print(s.trust.allow_unsigned)
print(s.trust.trusted_root or "")
print(s.device.labels_dir or "")
print(",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
print(s.runtime.docker_host or "")
') || die "the config is invalid (problems above); nothing was baked"
# $(...) drops the trailing empty lines: missing fields are empty.
mapfile -t fields <<<"$check"
allow_unsigned=${fields[0]:-} root_path=${fields[1]:-} labels_dir=${fields[2]:-} merged=${fields[3]:-}
docker_host=${fields[4]:-}
if [ "$engine" = podman ] && [ "$docker_host" != "unix://$socket" ]; then
    die "the config's runtime.docker_host is ${docker_host:-unset, the Docker socket}; a Podman device needs unix://$socket"
fi
if [ "$allow_unsigned" = True ] && [ "$lab" != yes ]; then
    die "the config sets trust.allow_unsigned: a device image must verify releases (--lab for a lab image)"
fi
if [ -n "$root_path" ] && [ ! -f "$root$root_path" ]; then
    die "the config pins trust.trusted_root $root_path, which is not in the image (--trusted-root FILE)"
fi
if [ ${#labels[@]} -gt 0 ] && [ "$labels_dir" != /etc/reconciler/labels.d ]; then
    die "--labels given, but the config's device.labels_dir is not /etc/reconciler/labels.d"
fi
log "labels: ${merged:-none}"

packages=(systemd-sysv systemd-timesyncd systemd-resolved udev kmod iproute2 ca-certificates
    "${engine_packages[@]}")
[ "$kernel" = no ] || packages+=("linux-image-$arch")
# shellcheck disable=SC2206 # a space-separated list on purpose
packages+=($extra_packages)
log "installing ${packages[*]}"
apt_in "$root" install "${packages[@]}" >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    die "apt-get install failed (log above)"
}

log "system settings"
echo "$hostname" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    "$hostname" >"$root/etc/hosts"
printf 'LABEL=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$root_label" >"$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/80-wired-dhcp.network" <<'EOF'
# packaging/image/build-rootfs.sh: DHCP on every wired interface.
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
run_in "$root" systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service "${engine_units[@]}" reconciler.service
# Empty: systemd makes a new one on each device's first boot (never share one between devices).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

chroot_release "$root"
# After the release: it removes the build's resolv.conf; the device's comes from resolved.
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -f "$root/etc/.resolv.conf.systemd-resolved.bak" # the build host's DNS servers
# The apt cache stayed outside; package lists are fetched again on the device when needed.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
find "$root/var/log" -type f -exec truncate --size=0 {} +
finished=yes
log "baked $root ($(du -sh --one-file-system "$root" | cut -f1))"
