#!/usr/bin/env bash
# Lint and types, as CI runs them: ruff (lint and format, configured in pyproject.toml)
# and mypy with the zope plugin over all of twinkly/.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(twinkly tests bench devtools twisted)
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
.venv/bin/mypy
