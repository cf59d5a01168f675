"""`brainspade make-phantom`: the embedded multi-site phantom, in the user data layout (W/phantom)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.phantom import make_phantom_folder
from brainspade.stages.config import run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    """Build W/phantom (skipped when an identical one exists); return its folder."""
    run_ = run_settings(cfg)
    return make_phantom_folder(stage_path(cfg, "phantom"), section(cfg, "phantom"), seed=run_.seed, force=run_.force)
