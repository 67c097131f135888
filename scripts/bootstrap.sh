#!/usr/bin/env bash
# Creates .venv and installs Twinkly with its test dependencies. Idempotent.
# The install is "compat" editable: the checkout itself is on sys.path, so twistd finds
# twisted/plugins/twinkly_plugin.py here (a PEP 660 editable install would hide it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[test,lint]' --config-settings editable_mode=compat
