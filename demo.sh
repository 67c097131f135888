#!/usr/bin/env bash
# Runs Twinkly on its embedded default: PostgreSQL 15 (source of truth) and 18 (target),
# both throwaway and local, installed on first use.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python -m devtools.demo
