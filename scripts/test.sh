#!/usr/bin/env bash
# The test command: set-up, lint, then the test suite (slow and GPU tiers are opt-in: -m slow).
# Without arguments the 60 s load test (-m load, ~2 min) runs too, as a second pytest run.
# CI on a fresh 2-core machine: 13 min 10 s (set-up ~2 min, 313 tests 9 min 27 s, load 1 min 46 s; session 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check . || echo "note: ruff format would reformat files (not enforced)"
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest
exec .venv/bin/python -m pytest -m load
