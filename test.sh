#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then end-to-end tests against two real
# PostgreSQL servers (15 and 18) that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
