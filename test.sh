#!/usr/bin/env bash
# Runs the whole test suite: lint and types, the unit tests under Twisted's trial, then
# every test (unit, integration, fault injection and end-to-end against two real
# PostgreSQL servers, 15 and 18, that the tests start themselves) under pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
scripts/test-tools.sh
scripts/lint.sh
.venv/bin/trial tests.unit
exec .venv/bin/python -m pytest -q "$@"
