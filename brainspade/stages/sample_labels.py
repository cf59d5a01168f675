"""`brainspade sample-labels --n N`: synthetic PV maps from the label LDM, in W/label_samples."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_path, write_json_atomic
from brainspade.engine.logging import colourise_labels, log_image_columns, progress, tensorboard_writer
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.generation.label_training import lesion_present, tissue_volumes
from brainspade.generation.labels import LabelSampler, draw_conditions, label_conditions
from brainspade.stages.common import select_device, stage_path

CONDITION_SEED, NOISE_SEED = 0, 1


def sample_seed(seed: int, index: int, purpose: int) -> int:
    """A per-sample seed that depends only on the run seed, the sample's index and what it is for."""
    return int(np.random.SeedSequence([seed, index, purpose]).generate_state(1)[0])


def condition_options(cfg: DictConfig, lesion_channels: list[str]) -> dict:
    """Keyword arguments of `draw_conditions` from the label_sampling config section."""
    settings = cfg.label_sampling
    if settings.conditions == "training":
        cache = SliceCache.open(require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data"))
        return {"training_conditions": label_conditions(cache, generator_label_indices(cache, list(cfg.data.source_datasets)))}
    if settings.conditions != "ranges":
        raise BrainspadeError(f"label_sampling.conditions={settings.conditions}: use ranges or training")
    ranges = {name: list(settings.lesion_range) for name in lesion_channels}
    ranges.update({name: list(r) for name, r in (OmegaConf.to_container(settings.lesion_ranges) or {}).items()})
    return {"lesion_ranges": ranges, "slice_range": list(settings.slice_range)}


def run(cfg: DictConfig) -> Path:
    """Write N post-processed PV maps (sample_XXXXXX.npy, float32 C x H x W) and conditions.csv."""
    n = int(cfg.n)
    if n <= 0:
        raise BrainspadeError(f"n={n}: ask for at least one sample, e.g. --n 100")
    vae_folder = require_complete(stage_path(cfg, "label_vae"), "label VAE", "train-label-vae")
    ldm_folder = require_complete(stage_path(cfg, "label_ldm"), "label LDM", "train-label-ldm")
    settings = cfg.label_sampling
    fingerprint = config_fingerprint(settings, n, int(cfg.seed), finished_fingerprint(vae_folder), finished_fingerprint(ldm_folder))
    folder = StageFolder(stage_path(cfg, "label_samples"), fingerprint)
    if folder.is_up_to_date() and not cfg.force:
        print(f"[sample-labels] {folder.path} is up to date")
        return folder.path
    # Samples are an output nothing trains on: another n, seed or setting simply replaces them.
    folder.prepare(cfg, force=True)
    for old in folder.path.glob("sample_*.npy"):
        old.unlink()

    sampler = LabelSampler.load(vae_folder, ldm_folder, select_device(cfg))
    sampler.background_threshold = float(settings.background_threshold)
    seed = int(cfg.seed)
    conditions = draw_conditions([sample_seed(seed, i, CONDITION_SEED) for i in range(n)], sampler.lesion_channels,
                                 **condition_options(cfg, sampler.lesion_channels))
    noise_seeds = [sample_seed(seed, i, NOISE_SEED) for i in range(n)]
    batch_size = int(settings.batch_size)
    rows, volumes, present = [], [], []
    bar = progress(total=n, desc="sample-labels", unit="map")
    writer = tensorboard_writer(folder.path)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pv_maps = sampler.sample(
            conditions[start:stop], noise_seeds[start:stop], steps=int(settings.steps), sampler=str(settings.sampler),
            guidance_scale=float(settings.guidance_scale), eta=float(settings.eta),
        )
        for k, i in enumerate(range(start, stop)):
            name = f"sample_{i:06d}.npy"
            with atomic_path(folder.path / name) as tmp:
                np.save(tmp, pv_maps[k].numpy().astype(np.float32))
            rows.append({"sample": i, "file": name, "noise_seed": noise_seeds[i],
                         **{f"lesion_{c}": float(conditions[i, j]) for j, c in enumerate(sampler.lesion_channels)},
                         "slice_position": float(conditions[i, -1])})
        volumes.append(tissue_volumes(pv_maps))
        present.append(torch.stack([lesion_present(pv_maps, sampler.channels.index(c), 10)
                                    for c in sampler.lesion_channels], dim=1) if sampler.lesion_channels else None)
        if start == 0:
            log_image_columns(writer, "samples", [colourise_labels(pv_maps[:8])], 0)
        bar.update(stop - start)
    bar.close()
    if writer is not None:
        writer.close()
    _write_conditions(folder.path / "conditions.csv", rows)
    write_json_atomic(folder.path / "metrics.json", _summary(sampler, np.concatenate(volumes), present))
    print(f"[sample-labels] {n} PV maps in {folder.path}")
    return folder.finish({"conditions": "conditions.csv", "pv_maps": "sample_*.npy", "metrics": "metrics.json"}, n=n)


def _write_conditions(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _summary(sampler: LabelSampler, volumes: np.ndarray, present: list) -> dict:
    summary = {"mean_tissue_volume": {c: float(volumes[:, i].mean()) for i, c in enumerate(sampler.channels)}}
    if sampler.lesion_channels:
        rates = torch.cat(present).float().mean(dim=0)
        summary["lesion_rate"] = {c: float(rates[j]) for j, c in enumerate(sampler.lesion_channels)}
    return summary
