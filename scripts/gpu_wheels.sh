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
# With their own needs the GPU image lacks (lightly -> hydra-core -> omegaconf, antlr4): scripts/gpu_env.py lets
# pip resolve the install from this folder, so a missing one is named before the check starts.
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
  lightly==1.6.0 torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat==0.0.3 hydra-core==1.3.2 omegaconf==2.3.0 \
  litdata==0.2.76 boto3==1.44.18 botocore==1.44.18 s3transfer==0.19.3 jmespath==1.1.0 tifffile==2026.3.3
# Compiled for the GPU image's Python (3.12): the handler's base64, LitData's object-store client.
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  pybase64==1.5.1 obstore==0.12.1
# antlr4's runtime is published as source only; pip builds it offline from this file (setuptools is on GPU images).
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$WHEELS" antlr4-python3-runtime==4.9.3
ls -l "$WHEELS"
