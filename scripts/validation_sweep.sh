#!/usr/bin/env bash
# Hyperparameter check of the embedded default on a validation split carved from the training
# images (20% per class; never the test images). Prints one summary table per variant.
#   bash scripts/validation_sweep.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/validation}
PY=${PY:-.venv/bin/python}
run() {  # name, overrides...
  local name=$1; shift
  "$PY" -m mist_jax.main --config configs/default.py --workdir "$OUT/$name" \
    --config.data.eval_split=validation "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: $*"; cat "$OUT/$name/summary.txt"
}
mkdir -p "$OUT"
run authors --config.mist.learning_rate=1e-4                 # MIST on every task
run lr1e-5 --config.compare_baseline=False
run first_task --config.mist.learning_rate=1e-4 --config.mist.tasks=first --config.compare_baseline=False
run drift --config.mist.learning_rate=1e-4 --config.learner.simplecil.drift_compensation=True --config.compare_baseline=False
