#!/usr/bin/env bash
# The test command: set-up, lint, then the test suite (slow and GPU tiers are opt-in: -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check . || echo "note: ruff format would reformat files (not enforced)"
exec .venv/bin/python -m pytest "$@"
