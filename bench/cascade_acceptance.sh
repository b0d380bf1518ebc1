#!/bin/sh
# The issue-14 acceptance run of docs/cascade.md for any spec, per seed: train specs/SPEC.yaml on BUDGET (skipped
# when OUT/SPEC/seedS/latest/exits.json exists), export the cascade (with full.onnx), calibrate with a held-out
# split (choose on the first 5000 test examples, report on the rest; target 0.5 points), benchmark the cascade
# at batch 1 on 300 examples of the report split. Then: python bench/cascade_table.py OUT SPEC SEED...
#   sh bench/cascade_acceptance.sh OUT SPEC "BUDGET" SEED...
#   e.g. sh bench/cascade_acceptance.sh /tmp/casc mwbp_fmnist "train.epochs=2" 0 1 2
set -e
[ $# -ge 4 ] || { echo "usage: sh bench/cascade_acceptance.sh OUT SPEC \"BUDGET\" SEED..." >&2; exit 2; }
OUT=$1; SPEC=$2; BUDGET=$3; shift 3
[ -x .venv/bin/netspec ] && PATH=$PWD/.venv/bin:$PATH
mkdir -p "$OUT/$SPEC"
for S in "$@"; do
  R=$OUT/$SPEC/seed$S
  O="$BUDGET train.device=cpu train.seed=$S train.out=$R"
  [ -e "$R/latest/exits.json" ] || \
    OMP_NUM_THREADS=1 NETSPEC_BUILD=$OUT/build netspec train specs/$SPEC.yaml $BUDGET train.device=cpu train.seed=$S train.out=$OUT/$SPEC/seed$S \
      > "$OUT/$SPEC/train_seed$S.log" 2>&1
  OMP_NUM_THREADS=1 NETSPEC_BUILD=$OUT/build netspec export specs/$SPEC.yaml $O --cascade "$OUT/$SPEC/cascade$S" \
      > "$OUT/$SPEC/export_seed$S.log" 2>&1
  OMP_NUM_THREADS=1 NETSPEC_BUILD=$OUT/build netspec calibrate specs/$SPEC.yaml $O --cascade "$OUT/$SPEC/cascade$S" \
      --holdout 5000 --target-drop 0.5 > "$OUT/$SPEC/calibrate_seed$S.txt" 2>&1
  OMP_NUM_THREADS=1 NETSPEC_BUILD=$OUT/build python bench/bench_cascade.py specs/$SPEC.yaml $O \
      --cascade "$OUT/$SPEC/cascade$S" --start 5000 --n 300 --rounds 3 --json "$OUT/$SPEC/bench_seed$S.json" \
      > "$OUT/$SPEC/bench_seed$S.txt" 2>&1
done
