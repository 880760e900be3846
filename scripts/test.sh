#!/usr/bin/env bash
# The test command: set-up, lint, then the test suite (slow and GPU tiers are opt-in: -m slow).
# Without arguments the 60 s load test (-m load, ~2 min) runs too, as a second pytest run.
# A fresh clone on a 2-core machine without AVX-512: ~31 min (set-up ~4 min, 423 tests ~24 min, load ~2 min).
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
