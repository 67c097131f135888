#!/usr/bin/env bash
# Installs the Debian packages the tests drive besides PostgreSQL (which devtools/sandbox.py
# installs itself): headless Chromium and its WebDriver for the dashboard test, and
# docker-compose to check docker/compose.yml (no Docker engine is needed for that).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${missing[@]}" >/dev/null
fi
