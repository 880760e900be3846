#!/usr/bin/env bash
# The GPU check, unattended, on a fresh machine with one NVIDIA GPU, in under 8 minutes (the steps' limits add up
# to 450 s; set-up from the wheel folder takes under a minute):
#   1. set-up: a Python whose torch sees the GPU, plus the packages it lacks;
#   2. the gpu test tier (tests/test_gpu.py: training, client_test and the handler on CUDA vs CPU, AMP, the
#      device augmentation);
#   3. pretraining throughput at 224 px, batch 256, resnet18 and resnet50: augmentation on the device vs in the
#      loader workers vs the compute-only ceiling (bench/gpu_throughput.py);
#   4. a real 224-px training on the GPU (client_train.py), then the served model's latency on the GPU
#      (bench/handler_latency.py), and through TorchServe and nginx when Java is there (bench/serve_bench.py);
#   5. what pretraining buys on the GPU: bench/refine_budget.py, (a) product vs (b) from scratch vs (c) probe.
#
#     bash scripts/gpu_check.sh [out_dir]        # figures and logs in out_dir (default runs/gpu_check)
#
# Missing packages come from the wheel folder WHEELS (default .whl, filled by scripts/gpu_wheels.sh on a machine
# that reaches PyPI: for GPU machines that reach nothing) or else from PyPI. Each step runs under its own time
# limit; a failed step is reported and the next one still runs.
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
  DEV=cpu SIZE=32 BATCH=8 IMAGES=48 STEPS=2 BACKBONES=resnet18 EPOCHS=1 BUDGET=6 RB_BATCH=16
  sees_gpu() { "$1" -c "import torch" 2>/dev/null; }
else
  DEV=cuda SIZE=224 BATCH=256 IMAGES=1536 STEPS=10 BACKBONES="resnet18 resnet50" EPOCHS=2 BUDGET=45 RB_BATCH=256
fi

# Python: PYTHON if set; else .venv if its torch sees a GPU; else the host's python3 (GPU images ship one with a
# CUDA torch), completed by scripts/gpu_env.py into .venv-gpu beside it without replacing its torch; else
# scripts/setup.sh makes .venv (needs PyPI). gpu_env.py names everything that cannot be had before any step.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then PY=.venv/bin/python
  elif command -v python3 >/dev/null && sees_gpu python3; then
    PY=$(python3 scripts/gpu_env.py --python "$(command -v python3)" --venv .venv-gpu --wheels "${WHEELS:-.whl}") || exit 2
  else bash scripts/setup.sh && PY=.venv/bin/python
  fi
fi
sees_gpu "$PY" || { echo "gpu_check: $PY's torch sees no CUDA GPU (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))"; exit 2; }
"$PY" -c "import sys; sys.exit(sys.version_info < (3, 11))" || { echo "gpu_check: $PY is older than Python 3.11"; exit 2; }
echo "gpu_check: $PY, device $DEV"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'capability', c and torch.cuda.get_device_capability(0))"
  echo "CPUs: $(nproc); Java: $(java -version 2>&1 | head -1 || echo none)"
} 2>&1 | tee -a "$SUMMARY"

step gpu_tests 90 "$PY" -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py tests/jobs/test_device.py \
  tests/training/test_amp_steps.py
# pytest passes when every test is skipped: on a GPU that would prove nothing, so it counts as a failure.
if grep -qE "[0-9]+ passed" "$OUT/gpu_tests.log"; then :
elif [ "${SMOKE:-0}" = 1 ]; then echo "== gpu_tests: all skipped, no GPU (smoke mode: nothing proven)" | tee -a "$SUMMARY"
else echo "== gpu_tests: no GPU test ran" | tee -a "$SUMMARY"; status=1
fi
# shellcheck disable=SC2086  # one argument per backbone
step throughput 60 "$PY" -m bench.gpu_throughput --device $DEV --backbones $BACKBONES --input_size $SIZE \
  --batch_size $BATCH --images $IMAGES --steps $STEPS --warmup 5

# A real model trained on the GPU at 224 px (the throughput set: 1536 train images, 5 valid per class).
RUNS="$OUT/runs"
DATA=$("$PY" -c "import tempfile; print(tempfile.gettempdir())")/simsiam_gpu_bench_${SIZE}_$IMAGES
SETTINGS="{'advance_settings': {'epochs': $EPOCHS, 'input_size': $SIZE, 'batch_size': $BATCH, 'refine_epochs': 10}}"
step train 45 env SIMSIAM_RUNS_DIR="$RUNS" "$PY" client_train.py --dataset_path "$DATA" --device $DEV \
  --trial_name gpu_check --annotation_data "$SETTINGS"
MODEL=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['model_path'])" "$RUNS/metric/trial.txt" 2>/dev/null)
if [ -n "$MODEL" ]; then
  "$PY" -c "import json, sys; print('model_info pretraining:', json.load(open(sys.argv[1]))['pretraining'])" \
    "$MODEL/model_info.json" | tee -a "$SUMMARY"
  step "latency_handler_$DEV" 30 "$PY" -m bench.handler_latency --model_path "$MODEL" --used_model SimSiam_gpu_check \
    --device "$DEV" --batch_sizes 1 8 32 --repeats 20
  if command -v java >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then
    step latency_served 45 "$PY" -m bench.serve_bench --model_path "$MODEL" --used_model SimSiam_gpu_check --device $DEV \
      --duration 4 --rounds 1
  else
    echo "== latency_served: skipped (no Java 17 for TorchServe or no nginx here)" | tee -a "$SUMMARY"
  fi
fi

# The claim that matters: does pretraining pay once the GPU buys thousands of SimSiam steps? (a) product,
# (b) supervised from scratch, (c) frozen probe, one seed, 45 s per classifier, on the demo set at 64 px.
step refine_budget 180 "$PY" -m bench.refine_budget --dataset demo --budget_s "$BUDGET" --seeds 0 --device $DEV \
  --settings "{\"batch_size\": $RB_BATCH}"

for f in throughput latency_handler_cuda latency_handler_cpu latency_served refine_budget; do
  [ -f "$OUT/$f.log" ] && { echo "-- $f"; grep -v -E "^(\s*$|.*[Ww]arn|.*Tip|.*available|.*LOCAL_RANK|.*AMP|.*stopped|.*deprecated|OpenVINO|proceeding without|Torch TensorRT)" "$OUT/$f.log" | tail -8; }
done | tee -a "$SUMMARY"
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo SOME STEP FAILED) (summary: $SUMMARY)"
exit $status
