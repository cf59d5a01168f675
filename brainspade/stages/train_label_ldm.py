"""`brainspade train-label-ldm`: the conditioned latent diffusion model over label latents, in W/label_ldm."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.labels import load_label_vae
from brainspade.settings import fingerprinted
from brainspade.stages.config import open_stage_folder, resolved_config, run_settings, section, stage_path
from brainspade.training.label_ldm import train_label_ldm, validation_metrics


def run(cfg: DictConfig) -> Path:
    """Train (or resume, or reuse) the label LDM; write checkpoint.pt (with EMA), metrics.json and the manifest."""
    run_ = run_settings(cfg)
    settings = section(cfg, "label_ldm")
    sampling = section(cfg, "label_sampling")
    sources = section(cfg, "data").source_datasets
    runtime_settings = section(cfg, "runtime")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    vae_folder = require_complete(stage_path(cfg, "label_vae"), "label VAE", "train-label-vae")
    cache = SliceCache.open(slices)
    vae = load_label_vae(vae_folder, cache.channels)  # another channel schema is refused here, in one line
    vae_fingerprint = finished_fingerprint(vae_folder)
    # Not the sampling settings: metrics.json records which were used, and `sample` may use others later.
    fingerprint = config_fingerprint(fingerprinted(settings), sources, finished_fingerprint(slices), vae_fingerprint,
                                     run_.seed)
    runtime = Runtime.create(runtime_settings, run_.device)
    folder = open_stage_folder(cfg, "label_ldm", "train-label-ldm", fingerprint)
    if folder is None:
        return stage_path(cfg, "label_ldm")
    seed_everything(run_.seed)
    sampler, run_info = train_label_ldm(folder.path, cache, generator_label_indices(cache, sources), vae,
                                        vae_fingerprint, settings, sampling, runtime, run_.seed, resolved_config(cfg))
    if distributed.is_main():  # the other ranks wait in finish()
        metrics = {**validation_metrics(sampler, cache, sources, settings, sampling, run_.seed), "runtime": run_info}
        write_json_atomic(folder.path / "metrics.json", metrics)
        print(f"[train-label-ldm] lesion rate with / without lesion condition: "
              f"{metrics['lesion_rate_conditioned_on_lesion']} / {metrics['lesion_rate_conditioned_healthy']}")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"}, steps=settings.steps)
