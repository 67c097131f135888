#!/usr/bin/env bash
# Soak test, not part of CI: mixed pgbench and driver load through Twinkly with a fault
# injected every minute (backends terminated on either side, the target stopped with
# -m immediate and restarted, a client killed mid-stream, half-open connections,
# garbage), on a sandbox of its own; prints RSS, fds, backend connections left and
# events lost at the end.
#   scripts/soak.sh                      # 30 minutes
#   scripts/soak.sh --duration 10m --fault-every 60s
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
exec .venv/bin/python scripts/soak.py "$@"
