"""`brainspade prepare-data`: validate data.root/manifest.csv and write the slice cache W/slices."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.data.freesurfer import SYNTHSEG_POSTERIOR_CODES, emptied_channels
from brainspade.data.label_sources import LabelReading
from brainspade.data.manifest import read_manifest
from brainspade.data.manifest_checks import check_manifest
from brainspade.data.phantom import make_phantom_folder
from brainspade.data.prepare import build_slice_cache
from brainspade.data.registration import RegistrationTarget
from brainspade.engine.atomic import atomic_folder
from brainspade.engine.stage import StageFolder, config_fingerprint
from brainspade.errors import BrainspadeError
from brainspade.settings import DataSettings, fingerprinted
from brainspade.stages.config import data_root, plain, run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    """Write W/slices (skipped when up to date with the data and config); return its folder."""
    run_ = run_settings(cfg)
    if cfg.data.name == "phantom":
        make_phantom_folder(stage_path(cfg, "phantom"), section(cfg, "phantom"), seed=run_.seed, force=run_.force)
    root = data_root(cfg)
    if not root.is_dir():
        raise BrainspadeError(f"{root}: data folder not found; set data.root=PATH to a folder with manifest.csv")
    data, slices = section(cfg, "data"), section(cfg, "slices")
    emptied = emptied_channels(data.channels, label_reading(data).extra_codes)
    if emptied:
        print(f"[prepare-data] warning: {emptied}", flush=True)
    rows = read_manifest(root)
    check_manifest(rows, root / "manifest.csv", data.source_datasets, data.target_datasets,
                   one_voxel_size=data.register == "none")
    manifest_hash = hashlib.sha256((root / "manifest.csv").read_bytes()).hexdigest()
    fingerprint = config_fingerprint(fingerprinted(data), slices, manifest_hash)
    target = stage_path(cfg, "slices")
    if StageFolder(target, fingerprint).reusable(run_.force):
        print(f"[prepare-data] {target} is up to date")
        return target
    # Validation happens inside the build; a bad row aborts before the swap, keeping any old cache.
    with atomic_folder(target) as building:
        counts = build_slice_cache(
            rows,
            building,
            root=root,
            channels=data.channels,
            lesion_channels=data.lesion_channels,
            reading=label_reading(data),
            label_format=data.label_format,
            registration=registration_target(data, run_.seed),
            target_datasets=data.target_datasets,
            template_resolution_mm=data.template_resolution_mm,
            size=slices.size,
            min_brain_fraction=slices.min_brain_fraction,
            every=slices.every,
        )
        (building / "config.yaml").write_text(OmegaConf.to_yaml({"data": plain(cfg.data), "slices": plain(cfg.slices)}))
        StageFolder(building, fingerprint).finish({"images": "images.npy", "brain_masks": "brain_masks.npy",
                                                  "pv_maps": "pv_maps.npy"}, counts=counts)
    print(f"[prepare-data] {counts['image_slices']} image slices, {counts['label_slices']} PV slices from {counts['volumes']} volumes")
    return target


def label_reading(data: DataSettings) -> LabelReading:
    """How this run reads label files (the schema and the format-specific mappings)."""
    return LabelReading(
        channels=tuple(data.channels),
        label_values=data.label_values,
        tolerance=data.pv_tolerance,
        posterior_codes=tuple(data.posterior_codes or SYNTHSEG_POSTERIOR_CODES),
        # Written per channel in config (Hydra's override grammar takes no integer dict keys), read per code.
        extra_codes={int(code): channel for channel, codes in (data.extra_codes or {}).items()
                     for code in codes},
    )


def registration_target(data: DataSettings, seed: int) -> RegistrationTarget | None:
    """The template scans are registered to, or None when they are already in MNI space (register=none)."""
    if data.register == "none":
        return None
    return RegistrationTarget(data.template_resolution_mm, data.min_similarity, seed)
