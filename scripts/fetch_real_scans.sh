#!/usr/bin/env bash
# Fetch the real brain scans the real-scan tests and benchmark use into a cache folder (no root needed).
#
# Colin 27 ("ch2"): one subject's T1, 1 mm, skull and scalp on, MNI-aligned, and its brain-extracted
# copy ("ch2bet"), as Debian ships them in the package mricron-data (main, BSD-3-clause; the scans are
# the MNI's Colin Holmes average as distributed with MRIcron). Downloaded with `apt-get download`
# from the machine's Debian mirror; only the two files are kept.
#
# Usage: scripts/fetch_real_scans.sh [FOLDER]   (default: $BRAINSPADE_REAL_SCANS or ~/.cache/brainspade/real_scans)
set -euo pipefail
folder="${1:-${BRAINSPADE_REAL_SCANS:-$HOME/.cache/brainspade/real_scans}}"
if [ -s "$folder/ch2.nii.gz" ] && [ -s "$folder/ch2bet.nii.gz" ]; then
  echo "[real-scans] $folder holds ch2 and ch2bet"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "[real-scans] apt-get and dpkg-deb are needed (a Debian or Ubuntu machine); copy ch2.nii.gz and ch2bet.nii.gz from" \
       "MRIcron's templates folder into $folder instead" >&2
  exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download mricron-data >/dev/null 2>"$work/apt.log") || {
  echo "[real-scans] apt-get download mricron-data failed: $(tail -n 1 "$work/apt.log")" >&2
  exit 1
}
dpkg-deb -x "$work"/mricron-data_*.deb "$work/x"
mkdir -p "$folder"
for name in ch2 ch2bet; do
  cp "$work/x/usr/share/mricron/templates/$name.nii.gz" "$folder/$name.nii.gz.tmp"
  mv "$folder/$name.nii.gz.tmp" "$folder/$name.nii.gz"
done
basename "$work"/mricron-data_*.deb > "$folder/SOURCE"
echo "[real-scans] ch2 and ch2bet from $(cat "$folder/SOURCE") in $folder"
