#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install brainspade into it (editable).
# Sourced by demo.sh and test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BRAINSPADE_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[brainspade] creating virtual environment $venv"
  # --system-site-packages lets a machine's existing CUDA torch be reused instead of reinstalled.
  "$python" -m venv --system-site-packages "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Keep a torch that is already importable (e.g. a CUDA build on a GPU machine); otherwise take
# the pinned CPU build, because an unpinned torch pulls several GB of CUDA packages.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
if torch_version="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)"; then
  echo "torch==$torch_version" > "$constraints"
else
  echo "[brainspade] installing torch (CPU build)"
  cat "$repo/scripts/constraints.txt" > "$constraints"
  "${pip[@]}" install -c "$constraints" torch
fi

stamp="$venv/.brainspade-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "[brainspade] installing brainspade and its dependencies"
  "${pip[@]}" install -c "$constraints" -e "$repo[dev]"
  touch "$stamp"
fi
