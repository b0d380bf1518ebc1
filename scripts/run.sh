#!/usr/bin/env bash
# Set up (if needed), then the main job on the embedded default data (Fashion-MNIST, CPU):
# compile the CPU-sized CNDS-8, train it, export the pruned ONNX model, and draw the graph.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SPEC=${1:-specs/cnds8_fmnist.yaml}
shift || true
netspec compile "$SPEC" "$@"
netspec train
netspec draw -o "build/$(cat build/CURRENT)/graph.svg"
netspec export --prune-aux "build/$(cat build/CURRENT)/model.onnx"
