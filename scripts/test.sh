#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test (unit and, against a real
# Docker engine, registry and Git servers, integration). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
