#!/usr/bin/env bash
# The main job on the embedded default: set-up, make the demo dataset, train SimSiam on it (CPU),
# score the test split, then serve the model once and send it one request.
#   bash scripts/demo.sh            # everything under runs/
#   SKIP_SERVE=1 SKIP_COMPARE=1 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
DATA=${DEMO_DATASET:-runs/demo_dataset}
DEVICE=${DEVICE:-cpu}
RUNS=${SIMSIAM_RUNS_DIR:-runs}  # where client_train.py and client_test.py write (jobs/outputs.py)
# Sized for 2 CPU cores and about 5 minutes in all, set-up included (a fresh .venv's set-up takes 1.5-4 min):
# every budget counts twice, since the comparison trains from scratch for the product's own time. On a GPU use the
# defaults (README). The demo's own settings: strong hue jitter and grey (its colours are random, so colour must
# not be what the views agree on), min_scale 0.5 (its patterns are a few pixels wide at 64 px).
# Pretraining 40 s, then the refine stage (LP-FT on valid's 600 labels: held-out run + final run) 30 s.
SETTINGS=${DEMO_SETTINGS:-"{'advance_settings': {'epochs': 40, 'input_size': 64, 'batch_size': 64, 'lr': 0.1, 'cj_hue': 0.5, 'gray_prob': 0.5, 'min_scale': 0.5, 'num_workers': 2, 'time_budget_s': 40, 'refine_time_budget_s': 30}}"}

if [ ! -d "$DATA/train/images" ]; then
  "$PY" -m dataset.demo "$DATA"
fi

LOGS="$RUNS/logs"
mkdir -p "$LOGS"
step() {  # step NAME CMD...: run it with its full output in $LOGS/NAME.log; on failure show the end of it
  echo "== $1 (log: $LOGS/$1.log)"
  local name=$1
  shift
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    tail -n 40 "$LOGS/$name.log"
    echo "demo: $name failed; its whole log is $LOGS/$name.log" >&2
    exit 1
  fi
}
step train "$PY" client_train.py --dataset_path "$DATA" --device "$DEVICE" --trial_name demo --annotation_data "$SETTINGS"
grep -E "pretraining: |valid: frozen|valid: refined" "$LOGS/train.log" | sed -E 's/^[0-9-]+ [0-9:,]+ [A-Z]+ [a-z_.]+: /  /'
tail -n 3 "$LOGS/train.log"
MODEL=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['model_path'])" "$RUNS/metric/trial.txt")
cp "$RUNS/metric/trial.txt" "$RUNS/metric/trial_train.txt"
# What self-supervision added: the refined model beside the frozen features' probe and beside the same encoder
# trained from scratch on valid's labels alone, through the same refine stage, for the same wall-clock time.
if [ -z "${SKIP_COMPARE:-}" ]; then
  step compare "$PY" -m bench.compare_model --dataset_path "$DATA" --model_path "$MODEL"
  sed -n '/^both trained on/,$p' "$LOGS/compare.log"
fi

step test "$PY" client_test.py --dataset_path "$DATA" --model_path "$MODEL" --used_model SimSiam_demo --device "$DEVICE"
EVALUATION=$("$PY" -c "import json, sys; t = json.load(open(sys.argv[1])); print(t['model_path'] + '/' + t['predict_result_filename'])" "$RUNS/metric/trial.txt")
sed -n "/^test accuracy/,/^evaluation:/p" "$LOGS/test.log"

if [ -z "${SKIP_SERVE:-}" ]; then
  # The whole test split through the product's API; the served answers must agree with client_test.py's.
  "$PY" scripts/demo_serve.py --model_path "$MODEL" --used_model SimSiam_demo --device "$DEVICE" \
    --dataset_path "$DATA" --evaluation "$EVALUATION" --logs "$LOGS"
fi
echo "demo done: model folder $MODEL"
