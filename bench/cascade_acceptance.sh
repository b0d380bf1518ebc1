#!/bin/sh
# The trained acceptance run of docs/cascade.md (issue 20) for any spec, per seed: train specs/SPEC.yaml on BUDGET
# (skipped when OUT/SPEC/seedS/latest/exits.json exists), export the cascade (with full.onnx), calibrate (target
# 0.5 points): the *_fmnist specs have data.val_split, so the thresholds are chosen on the validation split and
# every figure is reported on the test split; calibrate also measures the runner's batch-1 latency at the chosen
# point and curve points against full.onnx (+ A/A) and batch-64 throughput, on the first 500 test examples. Then
# bench/bench_cascade.py times the cascade independently (CPU clock, batch 1 and 64) on test examples 0-499.
# Every process runs one torch / onnxruntime thread. Then: python bench/cascade_table.py OUT SPEC SEED...
#   sh bench/cascade_acceptance.sh OUT SPEC "BUDGET" SEED...
#   e.g. sh bench/cascade_acceptance.sh /tmp/casc mwbp_fmnist "train.epochs=2 data.train_limit=30000" 0 1 2
# calibrate chooses by measured batch-1 latency; CHOOSE_BY=throughput|flops chooses otherwise, with the cascades and
# figures in OUT/SPEC_by_CHOOSE_BY (the trained runs in OUT/SPEC are shared): python bench/cascade_table.py OUT
# SPEC_by_throughput. NETSPEC_BUILD, when set, is the build folder (two runs at once need two).
set -e
[ $# -ge 4 ] || { echo "usage: sh bench/cascade_acceptance.sh OUT SPEC \"BUDGET\" SEED..." >&2; exit 2; }
OUT=$1; SPEC=$2; BUDGET=$3; shift 3
[ -x .venv/bin/netspec ] && PATH=$PWD/.venv/bin:$PATH
export OMP_NUM_THREADS=1 NETSPEC_BUILD=${NETSPEC_BUILD:-$OUT/build}
D=$OUT/$SPEC${CHOOSE_BY:+_by_$CHOOSE_BY}
mkdir -p "$OUT/$SPEC" "$D"
for S in "$@"; do
  R=$OUT/$SPEC/seed$S
  O="$BUDGET train.device=cpu train.seed=$S train.out=$R"
  [ -e "$R/latest/exits.json" ] || netspec train specs/$SPEC.yaml $O > "$OUT/$SPEC/train_seed$S.log" 2>&1
  netspec export specs/$SPEC.yaml $O --cascade "$D/cascade$S" > "$D/export_seed$S.log" 2>&1
  netspec calibrate specs/$SPEC.yaml $O --cascade "$D/cascade$S" --target-drop 0.5 --threads 1 \
      --choose-by "${CHOOSE_BY:-latency}" > "$D/calibrate_seed$S.txt" 2>&1
  python bench/bench_cascade.py specs/$SPEC.yaml $O --cascade "$D/cascade$S" --start 0 --n 500 --rounds 11 \
      --json "$D/bench_seed$S.json" > "$D/bench_seed$S.txt" 2>&1
done
