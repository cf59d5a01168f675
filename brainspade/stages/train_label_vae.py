"""`brainspade train-label-vae`: the KL autoencoder over PV maps, in W/label_vae."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME, build_model, load_checkpoint
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import config_fingerprint, finished_fingerprint, require_complete
from brainspade.models.label_vae import LabelVAE
from brainspade.settings import fingerprinted
from brainspade.stages.config import open_stage_folder, resolved_config, run_settings, section, stage_path
from brainspade.training.label_vae import evaluate_label_vae, train_label_vae


def run(cfg: DictConfig) -> Path:
    """Train (or resume, or reuse) the label VAE; write checkpoint.pt, metrics.json and the manifest."""
    run_ = run_settings(cfg)
    settings = section(cfg, "label_vae")
    sources = section(cfg, "data").source_datasets
    runtime_settings = section(cfg, "runtime")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    fingerprint = config_fingerprint(fingerprinted(settings), sources, finished_fingerprint(slices), run_.seed)
    runtime = Runtime.create(runtime_settings, run_.device)
    folder = open_stage_folder(cfg, "label_vae", "train-label-vae", fingerprint)
    if folder is None:
        return stage_path(cfg, "label_vae")
    seed_everything(run_.seed)
    cache = SliceCache.open(slices)
    run_info = train_label_vae(folder.path, cache, generator_label_indices(cache, sources), settings, runtime,
                               run_.seed, resolved_config(cfg))
    if distributed.is_main():  # the other ranks wait in finish()
        vae = build_model(load_checkpoint(folder.path / CHECKPOINT_NAME), "vae", LabelVAE).to(runtime.device)
        metrics = {**evaluate_label_vae(vae, cache, sources, settings.eval_batch_size, runtime.device),
                   "runtime": run_info}
        write_json_atomic(folder.path / "metrics.json", metrics)
        dice = ", ".join(f"{k} {v:.3f}" for k, v in metrics["dice"].items() if v is not None)
        print(f"[train-label-vae] held-out reconstruction Dice: {dice}")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"}, steps=settings.steps)
