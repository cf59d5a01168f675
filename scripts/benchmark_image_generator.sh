#!/usr/bin/env bash
# profile=cpu benchmark of the image generator on the phantom, with the ablations of benchmarks/image_generator.md.
# usage: scripts/benchmark_image_generator.sh [ROOT=/tmp/ig_cpu]   (logs beside the workdirs)
set -euo pipefail
ROOT=${1:-/tmp/ig_cpu}
BS=${BRAINSPADE:-.venv/bin/brainspade}
$BS prepare-data workdir="$ROOT" profile=cpu
$BS train-modisc workdir="$ROOT" profile=cpu
$BS train-image-generator workdir="$ROOT" profile=cpu
# Ablations reuse the slice cache and classifier (copied, so their fingerprints match).
for arm in no_moddat no_style; do
  mkdir -p "$ROOT-$arm"
  for stage in phantom slices modisc; do [ -e "$ROOT-$arm/$stage" ] || cp -r "$ROOT/$stage" "$ROOT-$arm/$stage"; done
done
$BS train-image-generator workdir="$ROOT-no_moddat" profile=cpu image_generator.weights.modality=0 image_generator.weights.dataset=0
$BS train-image-generator workdir="$ROOT-no_style" profile=cpu image_generator.weights.style_consistency=0
.venv/bin/python scripts/image_generator_table.py "$ROOT" "$ROOT-no_moddat" "$ROOT-no_style"
