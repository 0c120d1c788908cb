#!/usr/bin/env bash
# Installs everything the reconciler, its tests and its demo need on a fresh Debian machine (root):
# the container engine and test servers from Debian, then a virtualenv in .venv with the package.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

# podman with netavark and aardvark-dns: the engine suites run on Podman too; lintian,
# debhelper (its systemd snippets), man-db and binutils check the Debian package;
# qemu-user-static and binfmt-support run arm64 build chroots on an amd64 machine; nginx-light
# serves published trees in the static source tests (started by testkit/nginx.py, never as a service);
# prometheus and prometheus-pushgateway gather what test devices report for fleet-status (started by
# testkit/prometheus.py on loopback with their own data dirs, never as services).
apt_packages=(docker.io podman netavark aardvark-dns busybox-static docker-registry iptables git
    ca-certificates debootstrap systemd lintian debhelper man-db binutils qemu-user-static
    binfmt-support nginx-light prometheus prometheus-pushgateway)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "install: apt packages: ${missing[*]}" >&2
    apt-get update -q >/dev/null
    # No package may start its service here (prometheus would take :9090, docker.io the
    # default socket): the test setup runs every server itself, on loopback.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# arm64 programs through qemu: the binfmt handler (best effort: an unprivileged container
# cannot register it, and the arm64 packaging test then skips).
if [ "$(dpkg --print-architecture)" != arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 2>/dev/null ||
        echo "install: no binfmt handler for arm64 (arm64 packaging tests will skip)" >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# The test extra brings pytest, ruff, mypy (with the docker, PyYAML and requests stubs) and
# import-linter; the stamp follows pyproject.toml, so a new tool there is installed next run.
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    echo "install: python packages into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
