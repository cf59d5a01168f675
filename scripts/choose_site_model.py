"""Choose the site model's settings on a target site's dev subjects: how many reference images its fit reads
(`sampling.site_look.reference_images`) and how much of the generator's texture it keeps (`generator_texture`).

For each --reference-images N the script fits the site model as `sample` does (N unlabelled train slices of the site
as styles, the source sites' train label maps, seed 0), or reads one fitted model (--model, a sample set's
site_look.json). It then styles held-out source label maps with train slices of the site, puts the model on them with
each --shares value, and compares with the site's real *dev* images: the evaluation-only site classifier's shares
and the tissue ratios (GM/WM, CSF/GM; dev labels are read for these, as choosing settings on dev subjects allows).
This script never reads a test image of the site.

The rules, fixed before any number was read:
- reference images: the N whose model alone (share 0) has tissue ratios nearest the dev images' (sum of the two
  absolute differences), the smallest N among equals (a fit's time grows with N);
- texture share: the largest share at which the site classifier still names the site for at least half the images
  (the generator's own texture is kept as far as the site's look holds);
- one setting for every target site (the profile has one): the count with the smallest sum of gaps over the sites
  scored, and the smallest of their chosen shares.

Usage (a workdir after `brainspade demo` or `evaluate-generators`, which trains W/evaluation/site_classifier):
    .venv/bin/python scripts/choose_site_model.py --workdir W --site siteB --modality T1 \
        --reference-images 64 192 --shares 1 0.5 0.25 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--site", default="siteB")
    parser.add_argument("--modality", default="T1")
    parser.add_argument("--sources", nargs="+", default=["siteA", "siteT"], help="the generator's source data sets")
    fits = parser.add_mutually_exclusive_group(required=True)
    fits.add_argument("--reference-images", nargs="+", type=int, help="fit one model per count")
    fits.add_argument("--model", type=Path, help="a fitted model instead (a sample set's site_look.json)")
    parser.add_argument("--shares", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--save", type=Path, help="write each fitted model here as <N>.json (to compare again with "
                                                  "--model later, e.g. once the site classifier exists)")
    args = parser.parse_args()

    from brainspade.data.datasets import heldout_label_indices, style_image_indices
    from brainspade.data.slice_cache import SliceCache
    from brainspade.evaluation.metrics import tissue_levels
    from brainspade.evaluation.style_match import site_shares
    from brainspade.generation.images import ImageGenerator, ModalityClassifier
    from brainspade.generation.site_look import ScannerModel, fit_site_look
    from brainspade.generation.styles import style_bank_from_cache
    from brainspade.settings import SiteLookSettings

    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    cache = SliceCache.open(args.workdir / "slices")
    generator = ImageGenerator.from_folder(args.workdir / "image_generator", cpu, cache.channels)
    classifier_folder = args.workdir / "evaluation" / "site_classifier"
    site_classifier = (ModalityClassifier.from_folder(classifier_folder, cpu, cache.channels)
                       if (classifier_folder / "manifest.json").is_file() else None)
    if site_classifier is None:
        print(f"{classifier_folder} is not trained yet (`brainspade evaluate-generators`): no site shares, no texture "
              "choice")
    dev = cache.image_indices(split="dev", datasets=[args.site], modalities=[args.modality])
    if len(dev) == 0:
        raise SystemExit(f"{args.site}/{args.modality} has no dev subjects in {args.workdir / 'slices'}")

    models: dict[str, ScannerModel] = {}
    if args.model is not None:
        models[str(args.model)] = ScannerModel.from_dict(json.loads(args.model.read_text()), cache.channels)
    else:
        bank = style_bank_from_cache(cache, args.site, args.modality)
        for n in sorted(args.reference_images):
            settings = SiteLookSettings(enabled=True, method="site_model", levels=True, reference_images=n,
                                        blurs=[0.0], generator_texture=0.0)
            started = time.monotonic()
            models[f"{n} reference images"] = fit_site_look(generator.generate, cache, args.sources, bank, settings,
                                                            0, 16)
            print(f"fitted on {n} reference images in {time.monotonic() - started:.0f} s", flush=True)
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"{n}.json").write_text(json.dumps(models[f"{n} reference images"].as_dict()))

    rng = np.random.default_rng(0)
    maps = np.sort(rng.choice(heldout_label_indices(cache, args.sources), args.images, replace=False))
    pv = np.stack([cache.pv_map(int(i)) for i in maps]).astype(np.float32)
    styles = rng.choice(style_image_indices(cache, args.site, args.modality), args.images, replace=False)
    style_images = torch.stack([torch.from_numpy(cache.image(int(i)))[None] for i in styles])
    seeds = [1000 + k for k in range(args.images)]
    generated = torch.cat([generator.generate(torch.from_numpy(pv[s : s + 16]), style_images[s : s + 16], seeds[s : s + 16])
                           for s in range(0, args.images, 16)]).numpy()
    real = np.sort(rng.choice(dev, min(args.images, len(dev)), replace=False))

    def measure(images: np.ndarray, label_maps: np.ndarray) -> tuple[dict, dict]:
        shares = ({} if site_classifier is None
                  else site_shares(site_classifier, torch.from_numpy(np.asarray(images, np.float32)), 16))
        return shares, tissue_levels(np.asarray(images, np.float32), label_maps, list(cache.channels))

    def row(name: str, shares: dict, levels: dict, error: float | None = None) -> None:
        named = ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        gap = "" if error is None else f"{error:.3f}"
        print(f"| {name} | {named} | {levels['gm_wm']:.3f} | {levels['csf_gm']:.3f} | {gap} |", flush=True)

    truth_shares, truth = measure(np.stack([cache.image(int(i))[None] for i in real]),
                                  np.stack([cache.pv_map(int(cache.image_table["label_index"][i])) for i in real]))

    def error(levels: dict) -> float:
        return abs(levels["gm_wm"] - truth["gm_wm"]) + abs(levels["csf_gm"] - truth["csf_gm"])

    print(f"\n| {args.site}/{args.modality} images | site shares | GM/WM | CSF/GM | tissue-ratio gap to dev |\n"
          "|---|---|---|---|---|")
    row(f"real dev images ({len(real)} slices of {len(set(cache.image_table['subject'][real].tolist()))} subjects)",
        truth_shares, truth)
    row("generator alone", *measure(generated, pv), error(measure(generated, pv)[1]))
    chosen_model, chosen_share, best = None, None, None
    for name, model in models.items():
        print(f"\n{name}: {model.describe()}")
        for share in sorted(args.shares, reverse=True):
            shares, levels = measure(dataclasses.replace(model, generator_texture=share).apply(generated, seeds, pv), pv)
            row(f"{name}, {share:g} of the generator's texture", shares, levels, error(levels))
            if share == 0 and (best is None or error(levels) < best - 1e-9):
                chosen_model, best = name, error(levels)
    model = models[chosen_model] if chosen_model is not None else next(iter(models.values()))
    for share in sorted(args.shares, reverse=True) if site_classifier is not None else []:
        shares, _ = measure(dataclasses.replace(model, generator_texture=share).apply(generated, seeds, pv), pv)
        if shares.get(args.site, 0.0) >= 0.5:
            chosen_share = share
            break
    print(f"\nchosen on {args.site} dev subjects: {chosen_model or 'the given model'} (tissue-ratio gap "
          f"{best if best is not None else float('nan'):.3f}); generator_texture "
          f"{'none of the shares reaches half' if chosen_share is None else f'{chosen_share:g}'}")


if __name__ == "__main__":
    main()
