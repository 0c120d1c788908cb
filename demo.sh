#!/usr/bin/env bash
# The demo: installs what it needs (scripts/install.sh), starts a container engine if none answers,
# then runs one device against a local fleet repo made from fleet-repo-template/: a signed release
# applied, a change applied, a broken change rolled back, a tampered manifest refused.
# Reruns start clean; `./demo.sh --clean` removes what it left. State: $RECONCILER_DEMO_DIR
# (default /var/tmp/reconciler-demo); engine namespace: $RECONCILER_DEMO_NAMESPACE (default demo).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python -m demo.run_demo "$@"
