"""`brainspade make-phantom`: the embedded multi-site phantom, in the user data layout."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.data.phantom import build_phantom
from brainspade.engine.atomic import atomic_folder
from brainspade.engine.stage import StageFolder, config_fingerprint
from brainspade.stages.common import stage_path


def run(cfg: DictConfig) -> Path:
    """Build W/phantom (skipped when an identical one exists); return its folder."""
    fingerprint = config_fingerprint(cfg.phantom, cfg.seed)
    target = stage_path(cfg, "phantom")
    if StageFolder(target, fingerprint).reusable(bool(cfg.force)):
        print(f"[make-phantom] {target} is up to date")
        return target
    # Build beside the target and swap it in at the end, so a crash never leaves half a data set.
    with atomic_folder(target) as building:
        build_phantom(
            building,
            resolution_mm=int(cfg.phantom.resolution_mm),
            subjects_per_site={site: tuple(counts) for site, counts in cfg.phantom.subjects_per_site.items()},
            seed=int(cfg.seed),
        )
        (building / "config.yaml").write_text(OmegaConf.to_yaml(cfg.phantom, resolve=True))
        StageFolder(building, fingerprint).finish({"manifest": "manifest.csv", "overview": "overview.png"})
    return target


def ensure_phantom(cfg: DictConfig) -> Path:
    """Make the phantom if this run uses it and it is missing (data=phantom)."""
    return run(cfg)
