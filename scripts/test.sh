#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test (unit and, against a real
# Docker engine, registry and Git servers, integration). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check .
# Types (the whole package; --strict's flags on core/) and the layer contracts, both configured
# in pyproject.toml: a type error or an import across a boundary fails the run before any test.
.venv/bin/mypy
.venv/bin/lint-imports
# Integration tests mostly wait on containers and timers: several workers (pytest-xdist), each
# test in its own namespace, ports and temp dirs; tests that share one resource form a group.
exec .venv/bin/python -m pytest -n "${RECONCILER_TEST_WORKERS:-4}" --dist loadgroup "$@"
