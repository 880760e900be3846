#!/usr/bin/env bash
# The GPU check, unattended, on a fresh machine with one NVIDIA GPU (issue 17), in under 8 minutes:
#   1. set-up: a Python whose torch sees the GPU, plus the packages it lacks;
#   2. the gpu test tier (tests/test_gpu.py: training, client_test and the handler on CUDA vs CPU, AMP, the
#      device augmentation);
#   3. pretraining throughput at 224 px, batch 256, resnet18 and resnet50: augmentation on the device vs in the
#      loader workers vs the compute-only ceiling (bench/gpu_throughput.py);
#   4. a real 224-px training on the GPU (client_train.py), then the served model's latency on the GPU and the CPU
#      (bench/handler_latency.py), and through TorchServe and the proxy when Java is there (bench/serve_latency.py).
#
#     bash scripts/gpu_check.sh [out_dir]        # figures and logs in out_dir (default runs/gpu_check)
#
# Python: PYTHON if set; else .venv if its torch sees a GPU; else python3 if its torch does (GPU images ship one);
# else scripts/setup.sh makes .venv (needs PyPI). Missing packages come from the wheel folder WHEELS (default
# .whl, filled by scripts/gpu_wheels.sh on a machine that reaches PyPI: for GPU machines that reach nothing) or
# else from PyPI. Each step runs under its own time limit; a failed step is reported and the next one still runs.
# SMOKE=1 runs the same steps on the CPU at toy sizes (32 px, batch 8): the script's own test without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$SUMMARY"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  [ "$rc" = 0 ] || status=1
}
sees_gpu() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu SIZE=32 BATCH=8 IMAGES=48 STEPS=2 BACKBONES=resnet18 EPOCHS=1
  sees_gpu() { "$1" -c "import torch" 2>/dev/null; }
else
  DEV=cuda SIZE=224 BATCH=256 IMAGES=1536 STEPS=20 BACKBONES="resnet18 resnet50" EPOCHS=3
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then PY=.venv/bin/python
  elif command -v python3 >/dev/null && sees_gpu python3; then PY=python3
  else bash scripts/setup.sh && PY=.venv/bin/python
  fi
fi
sees_gpu "$PY" || { echo "gpu_check: $PY's torch sees no CUDA GPU (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))"; exit 2; }
echo "gpu_check: $PY, device $DEV"

# What the check imports, as module -> pinned requirement (requirements.txt's pins where it has them).
missing=$("$PY" - <<'EOF'
import importlib.util
import shutil
need = {
    "lightly": "lightly==1.6.0", "ts": "torchserve==0.12.0", "model_archiver": "torch-model-archiver==0.12.0",
    "enum_compat": "enum-compat", "pytorch_lightning": "pytorch-lightning==2.6.6", "sklearn": "scikit-learn",
    "matplotlib": "matplotlib", "yaml": "pyyaml", "requests": "requests", "psutil": "psutil", "pytest": "pytest",
    "pytest_timeout": "pytest-timeout", "hypothesis": "hypothesis",
}
if shutil.which("java"):  # TorchServe can run here: the proxy's packages too (bench/serve_latency.py)
    need |= {"fastapi": "fastapi==0.163.2", "uvicorn": "uvicorn==0.54.0", "multipart": "python-multipart==0.0.34",
             "httpx": "httpx==0.28.1"}
print(" ".join(req for mod, req in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  WHEELS=${WHEELS:-.whl}
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check: installing $missing from $WHEELS"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/simsiam-site "$WHEELS"/*.whl || exit 2
    export PYTHONPATH=/tmp/simsiam-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check: installing $missing from PyPI"
    # shellcheck disable=SC2086  # one argument per requirement
    "$PY" -m pip install -q $missing || exit 2
  fi
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'capability', c and torch.cuda.get_device_capability(0))"
  echo "CPUs: $(nproc); Java: $(java -version 2>&1 | head -1 || echo none)"
} 2>&1 | tee -a "$SUMMARY"

step gpu_tests 240 "$PY" -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py tests/jobs/test_device.py
# shellcheck disable=SC2086  # one argument per backbone
step throughput 270 "$PY" -m bench.gpu_throughput --device $DEV --backbones $BACKBONES --input_size $SIZE \
  --batch_size $BATCH --images $IMAGES --steps $STEPS --warmup 5

# A real model trained on the GPU at 224 px (the throughput set: 1536 train images, 5 valid per class).
RUNS="$OUT/runs"
DATA=$("$PY" -c "import tempfile; print(tempfile.gettempdir())")/simsiam_gpu_bench_${SIZE}_$IMAGES
SETTINGS="{'advance_settings': {'epochs': $EPOCHS, 'input_size': $SIZE, 'batch_size': $BATCH, 'refine_epochs': 10}}"
step train 150 env SIMSIAM_RUNS_DIR="$RUNS" "$PY" client_train.py --dataset_path "$DATA" --device $DEV \
  --trial_name gpu_check --annotation_data "$SETTINGS"
MODEL=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['model_path'])" "$RUNS/metric/trial.txt" 2>/dev/null)
if [ -n "$MODEL" ]; then
  "$PY" -c "import json, sys; print('model_info pretraining:', json.load(open(sys.argv[1]))['pretraining'])" \
    "$MODEL/model_info.json" | tee -a "$SUMMARY"
  for dev in $DEV cpu; do
    [ "$dev" = cpu ] && [ "$DEV" = cpu ] && [ -f "$OUT/latency_handler_cpu.log" ] && continue
    step "latency_handler_$dev" 90 "$PY" -m bench.handler_latency --model_path "$MODEL" --used_model SimSiam_gpu_check \
      --device "$dev" --batch_sizes 1 8 32 --repeats 20
  done
  if command -v java >/dev/null; then
    step latency_served 120 "$PY" -m bench.serve_latency --model_path "$MODEL" --used_model SimSiam_gpu_check --device $DEV
  else
    echo "== latency_served: skipped (no Java 17 for TorchServe here)" | tee -a "$SUMMARY"
  fi
fi

for f in throughput latency_handler_cuda latency_handler_cpu latency_served; do
  [ -f "$OUT/$f.log" ] && { echo "-- $f"; grep -v -E "^(\s*$|.*[Ww]arn|.*Tip|.*available|.*LOCAL_RANK|.*AMP|.*stopped|.*deprecated|OpenVINO|proceeding without|Torch TensorRT)" "$OUT/$f.log" | tail -8; }
done | tee -a "$SUMMARY"
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo SOME STEP FAILED) (summary: $SUMMARY)"
exit $status
