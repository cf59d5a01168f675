"""`brainspade train-modisc`: the modality / data-set classifier, in W/modisc (metrics.json: held-out accuracy)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.modisc_training import train_classifier
from brainspade.stages.common import stage_path


def run(cfg: DictConfig) -> Path:
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    slices_fingerprint = finished_fingerprint(slices)
    folder = StageFolder(stage_path(cfg, "modisc"),
                         config_fingerprint(cfg.data, cfg.modisc, int(cfg.seed), slices_fingerprint))
    runtime = Runtime.from_config(cfg)  # under torchrun: DDP, rank 0 checkpoints and evaluates
    if not folder.prepare(cfg, force=bool(cfg.force)):
        print(f"[train-modisc] {folder.path} is up to date")
        return folder.path
    seed_everything(int(cfg.seed))
    metrics = train_classifier(cfg, SliceCache.open(slices), folder.path, runtime)
    if distributed.is_main():  # the other ranks wait in finish()
        write_json_atomic(folder.path / "metrics.json", metrics)
        held = metrics["heldout"]
        print(f"[train-modisc] held-out accuracy: modality {held['modality_accuracy']:.3f}, "
              f"data set {held['dataset_accuracy']:.3f} ({held['n']} slices)")
    return folder.finish({"checkpoint": "checkpoint.pt", "metrics": "metrics.json"})
