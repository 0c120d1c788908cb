#!/usr/bin/env bash
# Writes packaging/constraints.txt: every Python distribution the package bundles, pinned to one
# version with the sha256 of each wheel build-deb.sh may install (CPython 3.11 on amd64 and arm64).
#
#   packaging/lock-deps.sh [--python python3.11] [--out packaging/constraints.txt]
#
# The set is pyproject.toml's dependencies plus its build backend (setuptools), resolved by pip
# from PyPI as it is today; then pip downloads the wheels of each platform at exactly those
# versions and hashes them. Wheels only: a source distribution would be compiled in the build
# chroot, which no hash can vouch for. Run it to take dependency updates (security fixes in a
# bundled OpenSSL or libyaml come this way, packaging/README.md), and commit the result.
# Needs network to PyPI (or PIP_INDEX_URL); not root.
set -euo pipefail
PROG=lock-deps.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
handle_help "$@"

checkout=$(cd "$PACKAGING_DIR/.." && pwd)
python=python3.11
out=$PACKAGING_DIR/constraints.txt
while [ $# -gt 0 ]; do
    case $1 in
    --python) python=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (--help)" ;;
    esac
done
require_tools "$python"
pydot=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pyver=${pydot/./}
machines=(x86_64 aarch64)

work=$(mktemp -d "${TMPDIR:-/tmp}/reconciler-lock.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Only PyPI (or the caller's PIP_INDEX_URL): no local wheel directories or site constraints.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
"$python" -m venv "$work/venv"
pip=$work/venv/bin/pip

"$python" - "$checkout/pyproject.toml" >"$work/requirements.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
for requirement in project["project"]["dependencies"] + project["build-system"]["requires"]:
    print(requirement)
EOF

# pip takes the platform tags literally: every manylinux level that Debian 12's glibc 2.36 runs.
platforms() {
    local machine=$1 minor
    for minor in $(seq 5 36); do echo "--platform=manylinux_2_${minor}_$machine"; done
    echo "--platform=manylinux2014_$machine"
    [ "$machine" != x86_64 ] || echo "--platform=manylinux2010_$machine --platform=manylinux1_$machine"
}

pins=/dev/null
for machine in "${machines[@]}"; do
    log "resolving for cp$pyver on $machine"
    "$pip" download --quiet --dest "$work/$machine" --only-binary=:all: \
        $(platforms "$machine") --implementation cp --python-version "$pyver" \
        --abi "cp$pyver" --constraint "$pins" --requirement "$work/requirements.txt"
    if [ "$pins" = /dev/null ]; then
        # The first platform decides the versions; the others must take the same.
        (cd "$work/$machine" && ls) | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' >"$work/pins.txt"
        pins=$work/pins.txt
    fi
done

"$python" - "$work" "${machines[@]}" >"$out.partial" <<EOF
import hashlib, re, sys
from collections import defaultdict
from pathlib import Path

work, machines = Path(sys.argv[1]), sys.argv[2:]
hashes = defaultdict(set)
for machine in machines:
    for wheel in (work / machine).glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        name = re.sub(r"[-_.]+", "-", name).lower()
        hashes[(name, version)].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
names = defaultdict(list)
for name, version in hashes:
    names[name].append(version)
clashes = {name: versions for name, versions in names.items() if len(versions) > 1}
if clashes:
    sys.exit(f"lock-deps.sh: platforms resolved different versions: {clashes}")
print("# The Python distributions bundled in the reconciler package, each pinned with the sha256")
print("# of every wheel it may install (CPython $pydot, manylinux: ${machines[*]}).")
print("# Written by packaging/lock-deps.sh from pyproject.toml; build-deb.sh installs exactly these.")
for (name, version), digests in sorted(hashes.items()):
    lines = [f"{name}=={version}"] + [f"    --hash=sha256:{d}" for d in sorted(digests)]
    print(" \\\\\n".join(lines))
EOF
mv "$out.partial" "$out"
log "wrote $out ($(grep -c '==' "$out") distributions)"
