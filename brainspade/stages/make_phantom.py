"""`brainspade make-phantom`: the embedded multi-site phantom, in the user data layout."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.data.phantom import build_phantom
from brainspade.engine.atomic import atomic_folder
from brainspade.engine.stage import StageFolder, config_fingerprint
from brainspade.stages.config import plain, run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    """Build W/phantom (skipped when an identical one exists); return its folder."""
    run_ = run_settings(cfg)
    settings = section(cfg, "phantom")
    # Hashed as the plain config node, as before the typed settings, so existing phantoms stay valid.
    fingerprint = config_fingerprint(plain(cfg.phantom), run_.seed)
    target = stage_path(cfg, "phantom")
    if StageFolder(target, fingerprint).reusable(run_.force):
        print(f"[make-phantom] {target} is up to date")
        return target
    # Build beside the target and swap it in at the end, so a crash never leaves half a data set.
    with atomic_folder(target) as building:
        build_phantom(
            building,
            resolution_mm=settings.resolution_mm,
            subjects_per_site={site: tuple(counts) for site, counts in settings.subjects_per_site.items()},
            seed=run_.seed,
        )
        (building / "config.yaml").write_text(OmegaConf.to_yaml(cfg.phantom, resolve=True))
        StageFolder(building, fingerprint).finish({"manifest": "manifest.csv", "overview": "overview.png"})
    return target


def ensure_phantom(cfg: DictConfig) -> Path:
    """Make the phantom if this run uses it and it is missing (data=phantom)."""
    return run(cfg)
