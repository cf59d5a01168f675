#!/usr/bin/env bash
# The prepared GPU check: scripts/gpu_check.sh [--out DIR] [--dry-run] [...]; see benchmarks/GPU.md.
# Uses .venv/bin/python where the project is installed; elsewhere (e.g. a GPU machine with its own torch
# and the other packages on PYTHONPATH) any python3 that imports torch, with the repository on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    PY=$GPU_CHECK_PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
elif python3 -c "import torch" 2>/dev/null; then
    PY=python3
else
    echo "gpu_check: no python with torch here; run scripts/install.sh first" >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
