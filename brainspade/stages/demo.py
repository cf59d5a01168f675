"""`brainspade demo`: the whole method on the embedded phantom, skipping finished stages."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.stages import prepare_data
from brainspade.stages.common import workdir


def run(cfg: DictConfig) -> Path:
    slices = prepare_data.run(cfg)
    print(f"[demo] phantom and slice cache ready in {slices.parent}")
    print("[demo] next stages (label generator, image generator, sampling, experiments) are not built yet")
    return workdir(cfg)
