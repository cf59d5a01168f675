"""Benchmark `brainspade sample`: throughput and peak memory, and label sampling against plain MONAI.

Usage (needs a workdir whose four generators are trained, e.g. after ./scripts/demo.sh):
    .venv/bin/python scripts/bench_sample.py --workdir brainspade_work --profile cpu

1. pairs/s and peak RSS of `brainspade sample --n N` (separate processes) for each N in --sizes;
2. label sampling: this pipeline (DDIM, --steps, per-sample seeds) against the loop a user would
   write with MONAI (LatentDiffusionInferer.sample, DDPM, 1000 steps, fp32) on the same trained
   models and conditions: seconds per label map and the per-channel tissue-volume distance
   (1-D Wasserstein) of each to real held-out slices, next to the distance between two disjoint
   real splits (the floor).
Prints a markdown section; --out appends it to a file.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def sample_throughput(workdir: Path, profile: str, n: int) -> tuple[float, float]:
    """(pairs per second, peak RSS in MiB) of one `brainspade sample --n n` process."""
    code = (
        "import resource, subprocess, sys, time\n"
        "start = time.time()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "brainspade", "sample", "--n", str(n), f"workdir={workdir}",
               f"profile={profile}", f"name=bench_{n}", "force=true"]
    out = subprocess.run([sys.executable, "-c", code, *command], check=True, capture_output=True, text=True).stdout
    seconds, rss_kib = out.split()
    return n / float(seconds), int(rss_kib) / 1024


def label_comparison(workdir: Path, n: int, steps: int) -> list[str]:
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    from brainspade.data.datasets import generator_label_indices
    from brainspade.data.slice_cache import SliceCache
    from brainspade.evaluation.metrics import tissue_volumes, volume_distances
    from brainspade.generation.labels import (
        LabelSampler,
        draw_conditions,
        label_conditions,
        postprocess_pv_maps,
    )
    from brainspade.stages.config import compose, section

    torch.set_num_threads(2)
    device = torch.device("cpu")
    cache = SliceCache.open(workdir / "slices")
    sampler = LabelSampler.from_folders(workdir / "label_vae", workdir / "label_ldm", device, cache.channels)
    source = list(dict.fromkeys(cache.label_table["dataset"][generator_label_indices(cache, cache_sources(workdir))]))
    train = generator_label_indices(cache, source)
    held_out = cache.label_indices(split="test", datasets=source)
    conditions = draw_conditions(range(n), sampler.lesion_channels, training_conditions=label_conditions(cache, train))
    real = torch.from_numpy(np.stack([cache.pv_map(i) for i in held_out]))
    half = len(train) // 2
    floor = volume_distances(
        tissue_volumes(torch.from_numpy(np.stack([cache.pv_map(i) for i in train[:half]]))),
        tissue_volumes(torch.from_numpy(np.stack([cache.pv_map(i) for i in train[half:]]))),
        cache.channels,
    )

    start = time.time()
    settings = section(compose("sample", ["label_sampling.sampler=ddim", f"label_sampling.steps={steps}"]),
                       "label_sampling")
    ours = sampler.sample(conditions, list(range(n)), settings)
    ours_seconds = time.time() - start
    # The same sampler with other seeds: how much W1 moves between two draws of n maps (the noise level
    # any "equal or better" reading has to beat).
    ours_again = sampler.sample(conditions, list(range(n, 2 * n)), settings)

    class Denoiser(torch.nn.Module):  # MONAI's inferer passes (x, timesteps, context)
        def forward(self, x, timesteps, context):
            return sampler.unet.unet(x, timesteps.expand(len(x)).long(), context=context)

    class Decoder(torch.nn.Module):
        def decode_stage_2_outputs(self, latents):
            return sampler.vae.decode(latents)

    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=sampler.scale_factor)
    torch.manual_seed(0)
    noise = torch.randn(n, *sampler.latent_shape)
    start = time.time()
    with torch.no_grad():
        decoded = inferer.sample(noise, Decoder(), Denoiser(), scheduler=scheduler,
                                 conditioning=sampler.unet.embed(conditions), verbose=False)
    monai_seconds = time.time() - start
    monai = postprocess_pv_maps(decoded, sampler.background_index, settings.background_threshold)

    real_volumes = tissue_volumes(real)
    d_ours = volume_distances(tissue_volumes(ours), real_volumes, cache.channels)
    d_monai = volume_distances(tissue_volumes(monai), real_volumes, cache.channels)
    d_again = volume_distances(tissue_volumes(ours_again), real_volumes, cache.channels)
    lines = [
        f"Label sampling, {n} maps, conditions as in the training data, same trained VAE + EMA UNet:",
        "",
        "| pipeline | s per map | speed-up | " + " | ".join(f"W1 {c}" for c in cache.channels) + " |",
        "|---|---|---|" + "---|" * len(cache.channels),
        f"| brainspade DDIM {steps} steps, eta 1 | {ours_seconds / n:.3f} | {monai_seconds / ours_seconds:.1f}x | "
        + " | ".join(f"{d_ours[c]:.4f}" for c in cache.channels) + " |",
        f"| brainspade DDIM {steps} steps, other seeds (draw-to-draw noise) | | | "
        + " | ".join(f"{d_again[c]:.4f}" for c in cache.channels) + " |",
        f"| MONAI LatentDiffusionInferer.sample, DDPM 1000 steps, fp32 | {monai_seconds / n:.3f} | 1.0x | "
        + " | ".join(f"{d_monai[c]:.4f}" for c in cache.channels) + " |",
        "| floor: two disjoint real training halves | | | " + " | ".join(f"{floor[c]:.4f}" for c in cache.channels) + " |",
        "",
        f"W1 = 1-D Wasserstein distance between per-slice tissue volumes (share of the slice) and {len(held_out)} real held-out slices.",
    ]
    return lines


def cache_sources(workdir: Path) -> list[str]:
    """The source data sets as the LDM stage recorded them (its resolved config)."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(workdir / "label_ldm" / "config.yaml").data.source_datasets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000], help="N values (none: skip throughput)")
    parser.add_argument("--label-maps", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    lines = [f"### `brainspade sample` at profile={args.profile}", "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}.",
             f"Command: `python scripts/bench_sample.py --workdir W --profile {args.profile}`", "",
             "| N | pairs/s | peak RSS (MiB) |", "|---|---|---|"]
    for n in args.sizes:
        rate, rss = sample_throughput(workdir, args.profile, n)
        lines.append(f"| {n} | {rate:.2f} | {rss:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", *label_comparison(workdir, args.label_maps, args.steps), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
