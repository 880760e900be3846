#!/usr/bin/env bash
# Fill the wheel folder scripts/gpu_check.sh installs from on a GPU machine that reaches no package index.
# Run where pip reaches PyPI; the folder (default .whl, git-ignored) then travels with the check.
# GPU images hold torch, Lightning, scikit-learn, pytest...; these are what they lack (pure-Python wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
mkdir -p "$WHEELS"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
  lightly==1.6.0 torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat==0.0.3
ls -l "$WHEELS"
