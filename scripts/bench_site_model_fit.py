"""Time the site-model fit: one fit per target site, as `sample` and the style match make them.

Usage (a workdir whose slice cache and image generator are trained, e.g. after ./scripts/demo.sh; nothing is
written into it, W/site_looks is not read):
    .venv/bin/python scripts/bench_site_model_fit.py --workdir brainspade_work --profile cpu \\
        --sites siteB/T1 siteC/FLAIR siteN/T1 [--json fits.json]

Prints each fit's wall time and the fitted model; --json writes both, so two code versions can be compared
for the same models (the fit is seeded: the same inputs give the same model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from brainspade.data.slice_cache import SliceCache
from brainspade.generation.images import ImageGenerator
from brainspade.generation.site_look import fit_site_look
from brainspade.generation.styles import style_bank_from_cache
from brainspade.stages.config import compose, run_settings, section, stage_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--sites", nargs="+", default=["siteB/T1", "siteC/FLAIR", "siteN/T1"],
                        help="DATASET/MODALITY style sources, each a site the generator did not train on")
    parser.add_argument("--json", type=Path, help="write the times and fitted models here")
    args = parser.parse_args()
    cfg = compose("sample", [f"profile={args.profile}", f"workdir={args.workdir.resolve()}"])
    sampling, data = section(cfg, "sampling"), section(cfg, "data")
    look = dataclasses.replace(sampling.site_look, enabled=True, method="site_model")
    cache = SliceCache.open(stage_path(cfg, "slices"))
    generator = ImageGenerator.from_folder(stage_path(cfg, "image_generator"), torch.device("cpu"), cache.channels)
    print(f"# site-model fits: {look.reference_images} reference images, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    results = {}
    for source in args.sites:
        dataset, modality = source.split("/")
        start = time.perf_counter()
        model = fit_site_look(generator.generate, cache, data.source_datasets,
                              style_bank_from_cache(cache, dataset, modality), look, run_settings(cfg).seed,
                              sampling.batch_size)
        seconds = time.perf_counter() - start
        if model is None:
            raise SystemExit(f"{source}: a source site; the site model fits only sites the generator did not train on")
        results[source] = {"seconds": round(seconds, 1), "model": model.as_dict()}
        print(f"| {source} | {seconds:.1f} s | {model.describe()} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
