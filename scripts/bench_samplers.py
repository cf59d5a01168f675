"""Quality vs number of sampler steps of a trained label LDM: tissue-volume distance and lesion rate per step count.

Usage (a workdir with finished label_vae and label_ldm):
    .venv/bin/python scripts/bench_samplers.py --workdir brainspade_work --steps 10 20 50 100 --out benchmarks/RESULTS.md

The sampler is the one matching the LDM's objective (DDIM, eta 1, for ddpm; Euler for rflow)
unless --sampler names another. For each step count the train-label-ldm validation runs with
that many steps (`training.label_ldm.validation_metrics`): W1 between per-slice tissue
volumes of samples (conditioned as held-out slices) and real held-out slices, and the share of
samples showing a lesion when conditioned on a held-out lesion / on none. Prints a markdown
section; --out appends it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100])
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--samples", type=int, default=100, help="samples per measurement (and per lesion condition)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from brainspade.data.slice_cache import SliceCache
    from brainspade.engine.checkpoint import load_checkpoint
    from brainspade.generation.labels import LabelSampler
    from brainspade.stages.config import section
    from brainspade.training.label_ldm import validation_metrics

    torch.set_num_threads(args.threads)
    cache = SliceCache.open(args.workdir / "slices")
    sampler = LabelSampler.from_folders(args.workdir / "label_vae", args.workdir / "label_ldm", torch.device("cpu"),
                                        cache.channels)
    state = load_checkpoint(args.workdir / "label_ldm" / "checkpoint.pt")
    config = OmegaConf.create(state["config"])  # the settings the LDM was trained and validated with
    sources = list(config.data.source_datasets)
    name = args.sampler if args.sampler != "auto" else {"ddpm": "ddim", "rflow": "rflow"}[sampler.objective]
    ldm_settings = dataclasses.replace(section(config, "label_ldm"), eval_samples=args.samples,
                                       eval_batch_size=args.batch_size)
    rows = []
    for steps in args.steps:
        sampling = dataclasses.replace(section(config, "label_sampling"), sampler=name, steps=steps)
        start = time.time()
        metrics = validation_metrics(sampler, cache, sources, ldm_settings, sampling, int(config.seed))
        seconds = time.time() - start
        drawn = args.samples * (1 + 2 * len(metrics["lesion_rate_conditioned_on_lesion"]))
        rows.append((steps, seconds / drawn, metrics))
        print(f"steps {steps}: {seconds / drawn:.3f} s/map", flush=True)

    channels = list(rows[0][2]["volume_w1_samples_vs_held_out"])
    lesions = list(rows[0][2]["lesion_rate_conditioned_on_lesion"])
    header = ["sampler steps", "s per map", "mean W1", *[f"W1 {c}" for c in channels],
              *[f"{lesion} rate (lesion / healthy cond.)" for lesion in lesions]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for steps, per_map, metrics in rows:
        distances = metrics["volume_w1_samples_vs_held_out"]
        rates = [f"{metrics['lesion_rate_conditioned_on_lesion'][k]:.2f} / {metrics['lesion_rate_conditioned_healthy'][k]:.2f}"
                 for k in lesions]
        lines.append("| " + " | ".join([str(steps), f"{per_map:.3f}", f"{np.mean(list(distances.values())):.4f}",
                                         *[f"{distances[c]:.4f}" for c in channels], *rates]) + " |")
    floor = rows[0][2]["volume_w1_train_vs_held_out"]
    real = rows[0][2]["lesion_rate_real_held_out"]
    lines.append("| floor: real train vs held-out | | " + f"{np.mean(list(floor.values())):.4f} | "
                 + " | ".join(f"{floor[c]:.4f}" for c in channels) + " | "
                 + " | ".join(f"{real[k]:.2f} (real)" for k in lesions) + " |")
    machine = f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads"
    section = "\n".join([
        f"## Label LDM quality vs sampler steps ({name}, objective {sampler.objective})", "",
        f"Machine: {machine}. Command: `python scripts/bench_samplers.py {' '.join(sys.argv[1:])}`. "
        f"{args.samples} samples per row and per lesion condition; W1 in slice shares.", "", *lines, ""])
    print(section)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
