#!/usr/bin/env bash
# The drivers' own test suites, directly against the source of truth and through Twinkly.
# Not part of CI. Usage: scripts/peer-suites.sh [pg8000] [asyncpg] [psycopg] [node-pg] [--trace] ...
#
#   PSYCOPG_SRC=DIR        a psycopg source checkout at the tested version (its sdist has no tests)
#   NODE_PG_SRC=DIR        a node-postgres checkout at tag pg@8.23.0 (the npm package has no tests)
#   PEER_WORK=DIR          downloads, venvs, reports (default /var/tmp/twinkly-peers)
#   PEER_TIMEOUT=SECONDS   bound on each suite run (default 1800)
#   PEER_TRUTH=HOST:PORT PEER_TARGET=HOST:PORT [PEER_USER PEER_PASSWORD]
#                          use running servers instead of fresh sandbox servers (the suites
#                          then run twice on the same databases)
#   PEER_TWINKLY_CONF=FILE HOCON appended to the default configuration of Twinkly
#   TWINKLY_PG15_PORT, TWINKLY_PG18_PORT, TWINKLY_PORT   ports of the sandbox and of Twinkly
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python scripts/peer_suites.py "$@"
