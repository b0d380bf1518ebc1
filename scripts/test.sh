#!/usr/bin/env bash
# Set up (if needed), then run the test suite on CPU: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec python -m pytest "$@"
