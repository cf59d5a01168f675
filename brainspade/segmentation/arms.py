"""Experiment arms: what each model trains on, and its trained nnU-Net in W/segmentation/models/<arm>.

An arm is real slices (the train split of one data set and modality, optionally only its
first k volumes), a synthetic sample set (made by `sample`), or both. Each arm is trained
once and reused by every experiment that names it; its folder is a finished stage folder
whose fingerprint covers the arm's data and the segmentation config, so a changed input is
never silently reused.

PROTOCOL: real training slices come from the *train* split only (test splits are for
evaluation); synthetic arms take their styles from train-split images (the sample stage's
style bank).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from brainspade.data.datasets import real_training_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_json_atomic, write_text_atomic
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.segmentation import nnunet
from brainspade.segmentation.raw_dataset import export_real_slices
from brainspade.stages.common import select_device, stage_path

TRAINING_KEYS = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "batch_size")


@dataclass(frozen=True)
class TrainedArm:
    """A finished arm: its folder, the nnU-Net tree inside, and what it was trained on."""

    name: str
    folder: Path
    fingerprint: str
    training: dict[str, Any]

    @property
    def nnunet_root(self) -> Path:
        return self.folder / "nnunet"


def model_folder(cfg: DictConfig, arm: str) -> Path:
    return stage_path(cfg, "segmentation") / "models" / arm


def arm_spec(cfg: DictConfig, arm: str) -> dict[str, Any]:
    arms = cfg.experiments.arms
    if arm not in arms:
        raise BrainspadeError(f"arm {arm!r} is not defined; experiments.arms has {sorted(arms)}")
    spec = OmegaConf.to_container(arms[arm], resolve=True)
    if not spec or set(spec) - {"real", "synthetic"}:
        raise BrainspadeError(f"experiments.arms.{arm}: give `real` and/or `synthetic`, got {sorted(spec or {})}")
    return spec


def synthetic_samples(cfg: DictConfig, synthetic: dict[str, Any]) -> Path:
    """The finished raw data set of a synthetic sample set (made by the sample stage when missing)."""
    from brainspade.stages.sample import make_samples  # heavy (generators); only for synthetic arms

    folder = make_samples(
        cfg,
        name=str(synthetic["samples"]),
        n=int(cfg.experiments.n_synthetic),
        style_dataset=str(synthetic["style_dataset"]),
        style_modality=str(synthetic["style_modality"]),
        conditions=str(synthetic["conditions"]),
    )
    return require_complete(folder, "synthetic sample set", "sample")


def train_settings(cfg: DictConfig) -> nnunet.TrainSettings:
    seg = cfg.segmentation
    return nnunet.TrainSettings(
        epochs=int(seg.epochs),
        iterations_per_epoch=int(seg.iterations_per_epoch),
        val_iterations_per_epoch=int(seg.val_iterations_per_epoch),
        batch_size=None if seg.batch_size is None else int(seg.batch_size),
        processes=int(seg.processes),
        augmentation_processes=int(seg.augmentation_processes),
    )


def ensure_arm(cfg: DictConfig, cache: SliceCache, arm: str) -> TrainedArm:
    """Train the arm's nnU-Net unless a finished one with the same inputs exists; resume a partial one."""
    spec = arm_spec(cfg, arm)
    samples = synthetic_samples(cfg, spec["synthetic"]) if "synthetic" in spec else None
    inputs = {
        "arm": spec,
        "slices": finished_fingerprint(cache.folder),
        "samples": None if samples is None else finished_fingerprint(samples),
        "training": {key: cfg.segmentation[key] for key in TRAINING_KEYS},
    }
    fingerprint = config_fingerprint(inputs)
    folder = StageFolder(model_folder(cfg, arm), fingerprint)
    if folder.reusable(bool(cfg.force)):
        return TrainedArm(arm, folder.path, fingerprint, folder.read_manifest()["training"])
    training = _describe(spec, cache, samples)
    _discard_other_runs(folder.path, fingerprint)
    folder.prepare(cfg, force=bool(cfg.force))
    write_text_atomic(folder.path / "fingerprint.txt", fingerprint + "\n")

    start = time.time()
    root = folder.path / "nnunet"
    settings = train_settings(cfg)
    with nnunet.nnunet_environment(root), (folder.path / "nnunet.log").open("a") as log:
        final = nnunet.final_checkpoint(root, arm)
        if not (final.is_file() or final.with_name("checkpoint_latest.pth").is_file()):
            print(f"[run-experiment] {arm}: nnU-Net data set, fingerprint, plan and preprocessing")
            sources = []
            if "real" in spec:
                real = folder.path / "real"
                shutil.rmtree(real, ignore_errors=True)
                export_real_slices(cache, training["real"]["image_indices"], real, cache.channels)
                sources.append(real)
            if samples is not None:
                sources.append(samples)
            nnunet.link_raw_dataset(sources, root / "raw" / nnunet.dataset_name(arm))
            nnunet.plan_and_preprocess(root, settings.processes, log)
        print(f"[run-experiment] {arm}: training nnU-Net ({settings.epochs} epochs x {settings.iterations_per_epoch} "
              f"iterations) on {training['slices']} slices; log in {folder.path / 'nnunet.log'}")
        seed_everything(int(cfg.seed))  # nnU-Net draws patches and augmentations from the global generators
        final = nnunet.train(root, arm, settings, select_device(cfg), log, folder.path)
    for part in training.values():
        if isinstance(part, dict):
            part.pop("image_indices", None)
    write_json_atomic(folder.path / "training.json", training)
    folder.finish({"checkpoint": str(final.relative_to(folder.path))}, training=training,
                  minutes=round((time.time() - start) / 60, 2))
    return TrainedArm(arm, folder.path, fingerprint, training)


def _describe(spec: dict[str, Any], cache: SliceCache, samples: Path | None) -> dict[str, Any]:
    """What the arm trains on, for the report (and, for real slices, which cache slices)."""
    training: dict[str, Any] = {"slices": 0}
    if "real" in spec:
        real = spec["real"]
        volumes = None if real.get("volumes") is None else int(real["volumes"])
        indices = real_training_indices(cache, str(real["dataset"]), str(real["modality"]), volumes)
        subjects = sorted(set(cache.image_table["subject"][indices].tolist()))
        training["real"] = {"dataset": real["dataset"], "modality": real["modality"], "split": "train",
                            "volumes": subjects, "slices": int(indices.size), "image_indices": indices.tolist()}
        training["slices"] += int(indices.size)
    if samples is not None:
        header = json.loads((samples / "dataset.json").read_text())
        training["synthetic"] = {**spec["synthetic"], "folder": str(samples), "slices": int(header["numTraining"])}
        training["slices"] += int(header["numTraining"])
    return training


def _discard_other_runs(path: Path, fingerprint: str) -> None:
    """An unfinished run with other inputs cannot be resumed: drop its nnU-Net tree and exports."""
    marker = path / "fingerprint.txt"
    if marker.is_file() and marker.read_text().strip() != fingerprint:
        for part in ("nnunet", "real", "tensorboard"):
            shutil.rmtree(path / part, ignore_errors=True)
