"""How much of the generator's texture can a site model keep before the site classifier stops naming the site?

A diagnostic of the scanner model (benchmarks/image_generator.md). Styles held-out source label maps with train
slices of one site, puts a fitted site model on them (a sample set's `site_look.json`) with several shares
of the generator's own texture kept (`sampling.site_look.generator_texture`), and prints the evaluation-only site
classifier's shares and the tissue ratios of each, next to the generator's images alone and the site's real
dev images (settings are chosen on dev subjects; this script never reads a test image).

Usage (a workdir after `brainspade evaluate-generators`, which trains W/evaluation/site_classifier):
    .venv/bin/python scripts/site_model_texture.py --workdir W --model W/samples/SF_n-ood/site_look.json \
        --site siteB --modality T1 --shares 1 0.5 0.25 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="a fitted ScannerModel (site_look.json)")
    parser.add_argument("--site", default="siteB")
    parser.add_argument("--modality", default="T1")
    parser.add_argument("--sources", nargs="+", default=["siteA", "siteT"], help="the generator's source data sets")
    parser.add_argument("--shares", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    from brainspade.data.datasets import heldout_label_indices, style_image_indices
    from brainspade.data.slice_cache import SliceCache
    from brainspade.evaluation.metrics import tissue_levels
    from brainspade.evaluation.style_match import site_shares
    from brainspade.generation.images import ImageGenerator, ModalityClassifier
    from brainspade.generation.site_look import ScannerModel

    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    cache = SliceCache.open(args.workdir / "slices")
    generator = ImageGenerator.from_folder(args.workdir / "image_generator", cpu, cache.channels)
    site_classifier = ModalityClassifier.from_folder(args.workdir / "evaluation" / "site_classifier", cpu, cache.channels)
    recorded = json.loads(args.model.read_text())
    model = ScannerModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})

    rng = np.random.default_rng(0)
    maps = np.sort(rng.choice(heldout_label_indices(cache, args.sources), args.images, replace=False))
    pv = np.stack([cache.pv_map(int(i)) for i in maps]).astype(np.float32)
    styles = rng.choice(style_image_indices(cache, args.site, args.modality), args.images, replace=False)
    style_images = torch.stack([torch.from_numpy(cache.image(int(i)))[None] for i in styles])
    seeds = [1000 + k for k in range(args.images)]
    generated = torch.cat([generator.generate(torch.from_numpy(pv[s : s + 16]), style_images[s : s + 16], seeds[s : s + 16])
                           for s in range(0, args.images, 16)]).numpy()
    dev = cache.image_indices(split="dev", datasets=[args.site], modalities=[args.modality])
    if len(dev) == 0:
        raise SystemExit(f"{args.site}/{args.modality} has no dev subjects in {args.workdir / 'slices'}")
    real = np.sort(rng.choice(dev, min(args.images, len(dev)), replace=False))

    def row(name: str, images: np.ndarray, label_maps: np.ndarray) -> None:
        shares = site_shares(site_classifier, torch.from_numpy(np.asarray(images, np.float32)), 16)
        levels = tissue_levels(np.asarray(images, np.float32), label_maps, list(cache.channels))
        named = ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        print(f"| {name} | {named} | {levels['gm_wm']:.3f} | {levels['csf_gm']:.3f} |", flush=True)

    print(model.describe())
    print(f"| {args.site}/{args.modality} images | site shares | GM/WM | CSF/GM |\n|---|---|---|---|")
    row("real dev images", np.stack([cache.image(int(i))[None] for i in real]),
        np.stack([cache.pv_map(int(cache.image_table["label_index"][i])) for i in real]))
    row("generator alone", generated, pv)
    for share in args.shares:
        moved = dataclasses.replace(model, generator_texture=share).apply(generated, seeds, pv)
        row(f"site model, {share:g} of the generator's texture", moved, pv)


if __name__ == "__main__":
    main()
