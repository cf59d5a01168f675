"""`brainspade train-modisc`: the modality / data-set classifier, in W/modisc (metrics.json: held-out accuracy)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.datasets import generator_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.engine.stage import config_fingerprint, finished_fingerprint, require_complete
from brainspade.settings import fingerprinted
from brainspade.stages.config import open_stage_folder, resolved_config, run_settings, section, stage_path
from brainspade.training.modisc import train_classifier


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    settings = section(cfg, "modisc")
    data = section(cfg, "data")
    runtime_settings = section(cfg, "runtime")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    runtime = Runtime.create(runtime_settings, run_.device)  # under torchrun: DDP, rank 0 checkpoints and evaluates
    fingerprint = config_fingerprint(fingerprinted(data), settings, run_.seed, finished_fingerprint(slices))
    folder = open_stage_folder(cfg, "modisc", "train-modisc", fingerprint)
    if folder is None:
        return stage_path(cfg, "modisc")
    cache = SliceCache.open(slices)
    sources = data.source_datasets
    metrics = train_classifier(folder.path, cache, generator_image_indices(cache, sources), sources, settings,
                               runtime, run_.seed, resolved_config(cfg))
    if distributed.is_main():  # the other ranks wait in finish()
        write_json_atomic(folder.path / "metrics.json", metrics)
        held = metrics["heldout"]
        print(f"[train-modisc] held-out accuracy: modality {held['modality_accuracy']:.3f}, "
              f"data set {held['dataset_accuracy']:.3f} ({held['n']} slices)")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"}, steps=settings.steps)
