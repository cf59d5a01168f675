"""Held-out reconstruction Dice of label VAE checkpoints (e.g. copies kept during a long run), as the stage reports it.

    python scripts/label_vae_dice.py --slices W/slices CHECKPOINT.pt [CHECKPOINT.pt ...]

The source data sets are read from each checkpoint's saved config; one markdown row per checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.checkpoint import build_model, load_checkpoint
from brainspade.models.label_vae import LabelVAE
from brainspade.training.label_vae import evaluate_label_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=Path, required=True, help="the workdir's slices/ folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    args = parser.parse_args()
    cache = SliceCache.open(args.slices)
    rows = []
    for path in args.checkpoints:
        state = load_checkpoint(path)
        vae = build_model(state, "vae", LabelVAE)
        with torch.no_grad():
            metrics = evaluate_label_vae(vae, cache, list(state["config"]["data"]["source_datasets"]),
                                         args.batch_size, torch.device("cpu"))
        rows.append((int(state["step"]), path.name, metrics["dice"]))
    channels = list(rows[0][2])
    print("| step | checkpoint | " + " | ".join(channels) + " |")
    print("|---|---|" + "---|" * len(channels))
    for step, name, dice in sorted(rows, key=lambda row: row[0]):
        cells = " | ".join("-" if dice[c] is None else f"{dice[c]:.3f}" for c in channels)
        print(f"| {step} | {name} | {cells} |")


if __name__ == "__main__":
    main()
