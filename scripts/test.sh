#!/usr/bin/env bash
# The test command: set-up, lint, then the test suite (slow and GPU tiers are opt-in: -m slow).
# Without arguments the 60 s load test (-m load, ~2 min) runs too, as a second pytest run.
# A fresh clone on a 2-core machine: 14 to 17 min (set-up ~2 min, 398 tests 11 to 14 min, load 1 min 40 s).
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
