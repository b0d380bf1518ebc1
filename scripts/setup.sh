#!/usr/bin/env bash
# Everything netspec needs on a fresh machine: system packages (when root), a virtualenv, torch, the project.
# Idempotent: a second run only checks. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${NETSPEC_VENV:-.venv}
TORCH_PIN=${NETSPEC_TORCH:-torch==2.13.0}   # GPU users: set NETSPEC_TORCH (e.g. "torch>=2.4") or install torch first
# Where torch comes from: this project's machines keep the 2.13.0 CPU build on disk (pip's find-links). Elsewhere
# plain PyPI serves a CUDA build; for the small CPU build set NETSPEC_TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX=(${NETSPEC_TORCH_INDEX:+--index-url "$NETSPEC_TORCH_INDEX"})

need_apt=()
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing ${need_apt[*]} (install them with your package manager; not root, so skipping)" >&2
  fi
fi

stamp="$VENV/.netspec-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_PIN"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing $TORCH_PIN and netspec into $VENV (log: $VENV/install.log)"
  if ! { "$VENV/bin/python" -m pip install "${TORCH_INDEX[@]}" "$TORCH_PIN" && "$VENV/bin/python" -m pip install -e ".[test]"; } \
      > "$VENV/install.log" 2>&1; then
    tail -30 "$VENV/install.log" >&2
    echo "setup: pip install failed (full log: $VENV/install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
