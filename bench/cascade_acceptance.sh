#!/bin/sh
# The issue-14 acceptance run of docs/cascade.md, per seed: train specs/mwbp_fmnist.yaml on a small budget, export
# the cascade and the pruned main exit, calibrate (target 0.5 points), benchmark at batch 1.
#   sh bench/cascade_acceptance.sh OUT SEED...     (e.g. sh bench/cascade_acceptance.sh /tmp/casc 0 1 2)
set -e
OUT=$1; shift
NS=${NETSPEC:-.venv/bin/netspec}; PY=${PYTHON:-.venv/bin/python}
BUDGET="train.epochs=2 data.train_limit=2560 data.test_limit=2000 train.device=cpu"
for s in "$@"; do
  O="$BUDGET train.seed=$s train.out=$OUT/seed$s"
  [ -e "$OUT/seed$s/latest" ] || $NS train specs/mwbp_fmnist.yaml $O > "$OUT/train_seed$s.log" 2>&1
  $NS export specs/mwbp_fmnist.yaml $O --cascade "$OUT/cascade$s" > "$OUT/export_seed$s.log" 2>&1
  $NS export specs/mwbp_fmnist.yaml $O --prune-aux "$OUT/main$s.onnx" >> "$OUT/export_seed$s.log" 2>&1
  $NS calibrate specs/mwbp_fmnist.yaml $O --cascade "$OUT/cascade$s" --target-drop 0.5 > "$OUT/calibrate_seed$s.txt" 2>&1
  $PY bench/bench_cascade.py specs/mwbp_fmnist.yaml $O --cascade "$OUT/cascade$s" --full "$OUT/main$s.onnx" \
      --n 300 --rounds 3 --json "$OUT/bench_seed$s.json" > "$OUT/bench_seed$s.txt" 2>&1
done
