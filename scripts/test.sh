#!/usr/bin/env bash
# Install if needed, then run the test suite (extra arguments go to pytest).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/install.sh"
cd "$repo"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$venv/bin/python" -m pytest -q "$@"
