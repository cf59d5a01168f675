#!/usr/bin/env bash
# Install if needed, then run the tests (extra arguments go to pytest): the default run leaves out the tests marked
# slow (end-to-end stage runs; pyproject.toml); --all runs every test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/install.sh"
cd "$repo"
# A real skull-on scan for the real-scan tests (skipped, with the reason, where it cannot be fetched).
"$repo/scripts/fetch_real_scans.sh" || echo "[brainspade] no real scans: the real-scan tests are skipped"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
if [ "${1:-}" = "--all" ]; then
  shift
  set -- -m "" "$@"  # an empty marker expression deselects nothing
fi
exec "$venv/bin/python" -m pytest -q "$@"
