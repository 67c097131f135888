#!/usr/bin/env bash
# Runs the whole test suite: the unit tests under Twisted's trial, then every test
# (unit and end-to-end against two real PostgreSQL servers, 15 and 18, that the tests
# start themselves) under pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
scripts/test-tools.sh
.venv/bin/trial tests.unit
exec .venv/bin/python -m pytest -q "$@"
