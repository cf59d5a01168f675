#!/usr/bin/env bash
# Install if needed, then run the whole method on the embedded phantom (extra key=value go to the CLI).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/install.sh"
cd "$repo"
exec "$venv/bin/brainspade" demo "$@"
