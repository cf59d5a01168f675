"""Does an arm's nnU-Net converge in the demo's budget? Dev Dice and minutes per training length and width.

Usage (a workdir with a finished slice cache, e.g. after `brainspade prepare-data`):
    .venv/bin/python scripts/bench_segmenter.py --workdir W --arm R_iod --on siteB/T1 --classes csf gm wm \
        --config "epochs=5 iterations_per_epoch=25" --config "epochs=20 iterations_per_epoch=25 base_features=8 \
        max_features=128" --seeds 0 1 --out benchmarks/segmenter.md

Each --config is a set of `segmentation` keys on top of the profile's (cpu by default). Every
(config, seed) trains the arm from scratch in its own folder under --scratch (never the
workdir's models), then segments the dev subjects of --on (settings are chosen on dev subjects; this
script never reads a test image): the table gives Dice mean over dev volumes per class, the training minutes, and for two seeds the largest per-class gap. A
synthetic or randomised arm trains on the finished sample set of that name in the workdir
(`W/samples/<name>`, e.g. after `brainspade demo`); the script never makes samples. The
arm's own keys (`experiments.arms.<arm>.segmentation`, e.g. the lesion arms' longer training)
are not applied: each --config states the whole setting on top of the profile's `segmentation`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--arm", default="R_iod")
    parser.add_argument("--on", default="siteB/T1", help="DATASET/MODALITY whose dev subjects are segmented")
    parser.add_argument("--classes", nargs="+", default=["csf", "gm", "wm"])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--config", action="append", default=[], help="segmentation keys, e.g. 'epochs=10'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_segmenter"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from brainspade.commands import CONFIG_DIR
    from brainspade.data.slice_cache import SliceCache
    from brainspade.segmentation.arms import ArmSpec, ensure_arm
    from brainspade.segmentation.evaluation import load_test_set, predict_test_set, score
    from brainspade.segmentation.nnunet import Segmenter
    from brainspade.stages.config import section

    dataset, modality = args.on.split("/")
    cache = SliceCache.open(args.workdir / "slices")
    volumes = load_test_set(cache, dataset, modality, split="dev")
    classes = {c: cache.channels.index(c) for c in args.classes}
    rows = []
    for config in args.config or [""]:
        overrides = [f"segmentation.{item}" for item in config.split()]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="run-experiment", overrides=[f"profile={args.profile}", *overrides])
        settings = section(cfg, "segmentation")
        arm = ArmSpec.from_dict(args.arm, dict(cfg.experiments.arms[args.arm]))
        per_seed = []
        for seed in args.seeds:
            folder = args.scratch / f"{args.arm}_{re.sub(r'[^A-Za-z0-9]+', '_', config) or 'profile'}_seed{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            started = time.time()
            trained = ensure_arm(arm, folder, cache, settings, lambda source: args.workdir / "samples" / source.samples,
                                 seed=seed, force=True, device=torch.device("cpu"))
            minutes = (time.time() - started) / 60
            segmenter = Segmenter(trained.nnunet_root, args.arm, torch.device("cpu"), settings)
            predictions = predict_test_set(segmenter, volumes, f"{args.arm} {config}")
            scores = score("bench", args.arm, volumes, predictions, classes, False)
            dice = {c: float(np.nanmean([r["dice"] for r in scores if r["class"] == c])) for c in classes}
            per_seed.append(dice)
            rows.append((config or "(profile)", seed, dice, minutes))
            print(f"{config or '(profile)'} seed {seed}: " + " ".join(f"{c} {v:.3f}" for c, v in dice.items())
                  + f"  ({minutes:.1f} min)", flush=True)
        if len(per_seed) > 1:
            gaps = {c: max(d[c] for d in per_seed) - min(d[c] for d in per_seed) for c in classes}
            rows.append((config or "(profile)", "seed gap", gaps, float("nan")))
    text = _markdown(args, rows, len(volumes))
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n")


def _markdown(args, rows, n_volumes) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"### {args.arm} on {args.on} dev ({n_volumes} volumes), profile {args.profile}", "",
             f"Commit `{commit}`, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. Command: `scripts/bench_segmenter.py "
             f"--arm {args.arm} --on {args.on} --seeds {' '.join(map(str, args.seeds))} "
             + " ".join(f"--config '{c}'" for c in args.config) + "`", "",
             "| segmentation keys | seed | " + " | ".join(args.classes) + " | minutes |",
             "|---|---|" + "---|" * len(args.classes) + "---|"]
    for config, seed, dice, minutes in rows:
        minutes_cell = "" if minutes != minutes else f"{minutes:.1f}"
        lines.append(f"| {config} | {seed} | " + " | ".join(f"{dice[c]:.3f}" for c in args.classes)
                     + f" | {minutes_cell} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # nnU-Net spawns worker processes: the guard keeps them from re-running this
    main()
