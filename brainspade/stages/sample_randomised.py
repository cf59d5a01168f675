"""`brainspade sample-randomised labels_from=NAME`: SynthSeg-style images on the label maps of a sample set.

Writes W/samples/<name> (default `D_<labels_from>`); the work is `generation.randomised_set.make_randomised_set`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.generation.randomised_set import make_randomised_set
from brainspade.stages.checks import named_folder
from brainspade.stages.config import resolved_yaml, run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    labels_from = str(cfg.labels_from)
    samples = stage_path(cfg, "samples")
    return make_randomised_set(named_folder(samples, "name", cfg.name or f"D_{labels_from}"),
                               named_folder(samples, "labels_from", labels_from),
                               section(cfg, "randomisation"), seed=run_.seed, force=run_.force,
                               config_yaml=resolved_yaml(cfg))
