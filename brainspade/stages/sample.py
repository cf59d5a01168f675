"""`brainspade sample --n N`: synthetic (image, label) pairs as an nnU-Net v2 raw data set in W/samples/<name>.

The work (blocks, shards, shared label maps, resume) is `generation.sample_set.make_sample_set`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.generation.sample_set import StyleSource, make_sample_set, parse_shard
from brainspade.stages.checks import named_folder
from brainspade.stages.config import count, generator_folders, run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    sampling = section(cfg, "sampling")
    style = StyleSource(cfg.style.dataset, cfg.style.modality, cfg.style.folder)
    conditions = str(cfg.conditions)
    name = cfg.name or style.default_name(conditions)
    return make_sample_set(
        named_folder(stage_path(cfg, "samples"), "name", name), generator_folders(cfg, sampling.modality_filter), style, count(cfg),
        sampling=sampling, labels=section(cfg, "label_sampling"), sources=section(cfg, "data").source_datasets,
        conditions=conditions, seed=run_.seed, shard=parse_shard(str(cfg.shard)), force=run_.force,
        device=run_.device, precision=section(cfg, "runtime").precision,
    )
