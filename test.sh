#!/usr/bin/env bash
# Runs the whole test suite: the unit tests under Twisted's trial, then every test
# (unit and end-to-end against two real PostgreSQL servers, 15 and 18, that the tests
# start themselves) under pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
scripts/test-tools.sh
unit_tests=$(grep -l "SynchronousTestCase" tests/test_*.py)
# shellcheck disable=SC2086
PYTHONPATH=tests .venv/bin/trial $unit_tests
exec .venv/bin/python -m pytest -q "$@"
