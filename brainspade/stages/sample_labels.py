"""`brainspade sample-labels --n N`: the label half of `brainspade sample`, in W/label_samples.

The same seeds, conditions (`conditions=healthy|lesion|as_training|ranges`), blocks of
`sampling.batch_size` and `label_sampling` settings as `sample`: with the same seed and
conditions, `pv/syn_XXXXXX.npy` here equals the file of the same name in a `sample` run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_path, write_json_atomic
from brainspade.engine.logging import colourise_labels, log_image_columns, progress, tensorboard_writer
from brainspade.engine.runtime import select_device, uses_bf16
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.evaluation.metrics import lesion_present, tissue_volumes
from brainspade.generation.labels import LabelSampler, sample_label_maps
from brainspade.generation.sample_set import case_id, label_condition_drawer
from brainspade.stages.config import count, resolved_yaml, run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    """Write N post-processed PV maps (pv/syn_XXXXXX.npy, float16 C x H x W) and conditions.csv."""
    n = count(cfg)
    run_ = run_settings(cfg)
    label_settings, sampling = section(cfg, "label_sampling"), section(cfg, "sampling")
    conditions_mode = str(cfg.conditions)
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    vae_folder = require_complete(stage_path(cfg, "label_vae"), "label VAE", "train-label-vae")
    ldm_folder = require_complete(stage_path(cfg, "label_ldm"), "label LDM", "train-label-ldm")
    device = select_device(run_.device)
    bf16 = uses_bf16(section(cfg, "runtime").precision, device)  # as in `sample`: its maps are `sample`'s maps
    fingerprint = config_fingerprint(label_settings, sampling.batch_size, conditions_mode, n, run_.seed,
                                     finished_fingerprint(vae_folder), finished_fingerprint(ldm_folder),
                                     *(["bf16"] if bf16 else []))
    folder = StageFolder(stage_path(cfg, "label_samples"), fingerprint)
    if folder.is_up_to_date() and not run_.force and len(list((folder.path / "pv").glob("*.npy"))) == n:
        print(f"[sample-labels] {folder.path} is up to date")
        return folder.path
    cache = SliceCache.open(slices)
    sampler = LabelSampler.from_folders(vae_folder, ldm_folder, device, cache.channels, bf16)
    draw = label_condition_drawer(conditions_mode, cache, sampler, label_settings, section(cfg, "data").source_datasets)
    # Samples are an output nothing trains on: another n, seed or setting simply replaces them.
    folder.prepare(resolved_yaml(cfg), force=True)
    (folder.path / "pv").mkdir(exist_ok=True)
    for old in folder.path.glob("pv/*.npy"):
        old.unlink()

    rows, volumes, present = [], [], []
    bar = progress(total=n, desc="sample-labels", unit="map")
    writer = tensorboard_writer(folder.path)
    for start in range(0, n, sampling.batch_size):
        ids = list(range(start, min(start + sampling.batch_size, n)))
        conditions, pv_maps = sample_label_maps(sampler, ids, run_.seed, draw, label_settings)
        for k, i in enumerate(ids):
            with atomic_path(folder.path / "pv" / f"{case_id(i)}.npy") as tmp:
                np.save(tmp, pv_maps[k].numpy().astype(np.float16))
            rows.append({"id": i, "file": f"pv/{case_id(i)}.npy",
                         **{f"lesion_{c}": float(conditions[k, j]) for j, c in enumerate(sampler.lesion_channels)},
                         "slice_position": float(conditions[k, -1])})
        volumes.append(tissue_volumes(pv_maps))
        if sampler.lesion_channels:
            present.append(torch.stack([lesion_present(pv_maps, sampler.channels.index(c), 10)
                                        for c in sampler.lesion_channels], dim=1))
        if start == 0 and writer is not None:
            log_image_columns(writer, "samples", [colourise_labels(pv_maps[:8])], 0)
        bar.update(len(ids))
    bar.close()
    if writer is not None:
        writer.close()
    _write_conditions(folder.path / "conditions.csv", rows)
    write_json_atomic(folder.path / "metrics.json", _summary(sampler, np.concatenate(volumes), present))
    print(f"[sample-labels] {n} PV maps in {folder.path}")
    return folder.finish({"conditions": "conditions.csv", "pv_maps": "pv/", "metrics": "metrics.json"}, n=n)


def _write_conditions(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _summary(sampler: LabelSampler, volumes: np.ndarray, present: list) -> dict:
    summary = {"mean_tissue_volume": {c: float(volumes[:, i].mean()) for i, c in enumerate(sampler.channels)}}
    if present:
        rates = torch.cat(present).float().mean(dim=0)
        summary["lesion_rate"] = {c: float(rates[j]) for j, c in enumerate(sampler.lesion_channels)}
    return summary
