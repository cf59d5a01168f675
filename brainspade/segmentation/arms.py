"""Experiment arms: what each model trains on, and its trained nnU-Net in W/segmentation/models/<arm>.

An arm is real slices (the train split of one data set and modality, optionally only its
first k volumes), a generated sample set (learnt images made by `sample`, or domain-randomised
images on the same label maps made by `sample-randomised`), or real and generated together. A learnt set names
its synthesis: brainSPADE as published, or an extension on top of it (a fitted site look), each a separate arm
in the same report (SYNTHESES). Each arm is trained
once and reused by every experiment that names it; its folder is a finished stage folder
whose fingerprint covers the arm's data and the segmentation config, so a changed input is
never silently reused.

PROTOCOL: real training slices come from the *train* split only (test splits are for
evaluation); synthetic arms take their styles from train-split images (the sample stage's
style bank).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainspade.data.datasets import real_training_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_json_atomic, write_text_atomic
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.segmentation import nnunet
from brainspade.segmentation.raw_dataset import export_real_slices
from brainspade.settings import SegmentationSettings, SiteLookSettings

TRAINING_KEYS = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "batch_size", "lesion_case_share",
                 "base_features", "max_features", "class_weights")


@dataclass(frozen=True)
class RealSource:
    """Train-split slices of one data set and modality; only its first `volumes` subjects when given."""

    dataset: str
    modality: str
    volumes: int | None = None


@dataclass(frozen=True)
class Synthesis:
    """How a synthetic set's images are made: the site-look keys it sets on the profile's, and the report's words."""

    images: str  # the Models table's words; {site} is the style data set
    site_look: Mapping[str, Any]  # SiteLookSettings keys set on top of the profile's `sampling.site_look`


# The published method and its extensions, side by side (METHOD.md): each synthetic arm names its own.
SYNTHESES = {
    "published": Synthesis("published brainSPADE (SPADE, styles from {site})", {"enabled": False}),
    "site_model": Synthesis("extension: SPADE + fitted site model (styles from {site})",
                            {"enabled": True, "method": "site_model"}),
    "site_model_render": Synthesis("ablation: fitted site-model render (styles from {site})",
                                   {"enabled": True, "method": "site_model", "generator_texture": 0.0}),
    "quantile_map": Synthesis("extension: SPADE + pooled quantile map (styles from {site})",
                              {"enabled": True, "method": "quantile_map"}),
}


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic sample set made by `brainspade sample`: its name, style images, label conditions and synthesis.

    `synthesis` (a key of SYNTHESES) says how its images are made: `published` is brainSPADE as published, the
    others put a fitted site look on (or in place of) the SPADE's images.
    """

    samples: str
    style_dataset: str
    style_modality: str
    conditions: str
    synthesis: str

    def site_look(self, profile: SiteLookSettings) -> SiteLookSettings:
        """The profile's site look with this synthesis's keys set (its parameters stay the profile's)."""
        return dataclasses.replace(profile, **SYNTHESES[self.synthesis].site_look)


@dataclass(frozen=True)
class RandomisedSource:
    """Domain-randomised images (`brainspade sample-randomised`) on the label maps of sample set `labels_from`."""

    samples: str
    labels_from: str


SOURCES = {"real": RealSource, "synthetic": SyntheticSource, "randomised": RandomisedSource}


@dataclass(frozen=True)
class ArmSpec:
    """What one arm trains on: real slices and/or one generated sample set (learnt or randomised images).

    `segmentation`: nnU-Net training keys (`TRAINING_KEYS`) that this arm sets on top of the profile's.
    """

    name: str
    real: RealSource | None = None
    synthetic: SyntheticSource | None = None
    randomised: RandomisedSource | None = None
    segmentation: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def generated(self) -> SyntheticSource | RandomisedSource | None:
        return self.synthetic or self.randomised

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any] | None) -> ArmSpec:
        """An arm of `experiments.arms` (plain containers), refused in one line when malformed."""
        if not spec or not set(spec) & set(SOURCES) or set(spec) - {*SOURCES, "segmentation"} \
                or {"synthetic", "randomised"} <= set(spec):
            raise BrainspadeError(f"experiments.arms.{name}: give `real` and/or one of `synthetic`, `randomised` "
                                  f"(and optionally `segmentation`); got {sorted(spec or {})}")
        segmentation = dict(spec.get("segmentation") or {})
        if set(segmentation) - set(TRAINING_KEYS):
            raise BrainspadeError(f"experiments.arms.{name}.segmentation: an arm may set {', '.join(TRAINING_KEYS)}; "
                                  f"got {', '.join(sorted(set(segmentation) - set(TRAINING_KEYS)))}")
        parts = {}
        for key, source in SOURCES.items():
            if key in spec:
                wanted = [f.name for f in dataclasses.fields(source)]
                try:
                    parts[key] = source(**spec[key])
                except TypeError:
                    raise BrainspadeError(f"experiments.arms.{name}.{key}: give {', '.join(wanted)}, "
                                          f"got {sorted(spec[key] or {})}") from None
        synthetic = parts.get("synthetic")
        if synthetic is not None and synthetic.synthesis not in SYNTHESES:
            raise BrainspadeError(f"experiments.arms.{name}.synthetic.synthesis={synthetic.synthesis!r}: choose one "
                                  f"of {', '.join(SYNTHESES)}")
        return cls(name, **parts, segmentation=segmentation)

    def as_dict(self) -> dict[str, Any]:
        """The spec as written in the config (the arm's fingerprint and report read this)."""
        spec = {key: dataclasses.asdict(getattr(self, key)) for key in SOURCES if getattr(self, key) is not None}
        if self.segmentation:
            spec["segmentation"] = dict(self.segmentation)
        return spec


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


def ensure_arm(
    arm: ArmSpec,
    folder: Path,
    cache: SliceCache,
    settings: SegmentationSettings,
    synthetic_samples: Callable[[SyntheticSource | RandomisedSource], Path],
    *,
    seed: int,
    force: bool,
    device: torch.device,
    config_yaml: str | None = None,
) -> TrainedArm:
    """Train the arm's nnU-Net in `folder` unless a finished one with the same inputs exists; resume a partial one.

    `synthetic_samples(source)` returns the finished raw data set of a synthetic source (the
    stage makes it when missing). `force` retrains from scratch; `config_yaml`, the run's
    resolved config, is saved in the folder.
    """
    samples = None
    if arm.generated is not None:
        samples = require_complete(synthetic_samples(arm.generated), "synthetic sample set", "sample")
    fingerprint = _arm_fingerprint(arm, cache, settings, samples)
    stage = StageFolder(folder, fingerprint)
    if stage.reusable(force):
        return TrainedArm(arm.name, folder, fingerprint, stage.read_manifest()["training"])
    training = _describe(arm, cache, samples)
    training["updates"] = {"epochs": settings.epochs, "iterations_per_epoch": settings.iterations_per_epoch,
                           "class_weights": settings.class_weights}
    _discard_partial_run(folder, fingerprint, force)
    stage.prepare(config_yaml, force=force)
    write_text_atomic(folder / "fingerprint.txt", fingerprint + "\n")

    start = time.time()
    root = folder / "nnunet"
    with nnunet.nnunet_environment(root), (folder / "nnunet.log").open("a") as log:
        final = nnunet.final_checkpoint(root, arm.name)
        if not (final.is_file() or final.with_name("checkpoint_latest.pth").is_file()):
            print(f"[run-experiment] {arm.name}: nnU-Net data set, fingerprint, plan and preprocessing")
            sources = []
            if arm.real is not None:
                real = folder / "real"
                shutil.rmtree(real, ignore_errors=True)
                export_real_slices(cache, training["real"]["image_indices"], real, cache.channels)
                sources.append(real)
            if samples is not None:
                sources.append(samples)
            nnunet.link_raw_dataset(sources, root / "raw" / nnunet.dataset_name(arm.name))
            lesion_ids = [cache.channels.index(c) for c in cache.lesion_channels]
            nnunet.write_case_sampling(root, arm.name, lesion_ids, settings.lesion_case_share)
            nnunet.plan_and_preprocess(root, settings.processes, log, base_features=settings.base_features,
                                       max_features=settings.max_features)
        print(f"[run-experiment] {arm.name}: training nnU-Net ({settings.epochs} epochs x "
              f"{settings.iterations_per_epoch} iterations) on {training['slices']} slices; log in {folder / 'nnunet.log'}")
        seed_everything(seed)  # nnU-Net draws patches and augmentations from the global generators
        final = nnunet.train(root, arm.name, settings, device, log, folder)
    for part in training.values():
        if isinstance(part, dict):
            part.pop("image_indices", None)
    write_json_atomic(folder / "training.json", training)
    stage.finish({"checkpoint": str(final.relative_to(folder))}, training=training,
                 minutes=round((time.time() - start) / 60, 2))
    return TrainedArm(arm.name, folder, fingerprint, training)


def _arm_fingerprint(arm: ArmSpec, cache: SliceCache, settings: SegmentationSettings, samples: Path | None) -> str:
    """What a trained arm depends on: its data (spec, slice cache, sample set) and its training keys."""
    return config_fingerprint({
        "arm": arm.as_dict(),
        "slices": finished_fingerprint(cache.folder),
        "samples": None if samples is None else finished_fingerprint(samples),
        "training": {key: getattr(settings, key) for key in TRAINING_KEYS},
    })


def ensure_arms(
    arms: Sequence[ArmSpec],
    models: Path,
    cache: SliceCache,
    settings: Mapping[str, SegmentationSettings],
    synthetic_samples: Callable[[SyntheticSource | RandomisedSource], Path],
    *,
    seed: int,
    force: bool,
    device: torch.device,
    config_yaml: str | None = None,
    at_once: int = 1,
) -> dict[str, TrainedArm]:
    """Every arm's model (`ensure_arm`, in `models/<arm>`), in the order given.

    The sample sets come first, one after another (each uses every thread). On a CPU with `at_once` > 1, the arms
    still to train then train `at_once` at a time, each in its own process with its share of the threads: small 2D
    nnU-Nets keep one thread busier than two. Each arm is seeded as it would be alone; its weights may differ from a
    run on more threads in the last bits (floating-point sums in another order).
    """
    made = {arm.name: (require_complete(synthetic_samples(arm.generated), "synthetic sample set", "sample")
                       if arm.generated is not None else None) for arm in arms}
    to_train = [arm for arm in arms
                if not StageFolder(models / arm.name,
                                   _arm_fingerprint(arm, cache, settings[arm.name], made[arm.name])).reusable(force)]
    if at_once > 1 and device.type == "cpu" and len(to_train) > 1:
        threads = max(1, torch.get_num_threads() // at_once)
        print(f"[run-experiment] training {len(to_train)} arms {at_once} at a time, {threads} thread(s) each: "
              f"{', '.join(arm.name for arm in to_train)}", flush=True)
        context = multiprocessing.get_context("spawn")  # a forked OpenMP runtime can hang
        with concurrent.futures.ProcessPoolExecutor(at_once, mp_context=context) as pool:
            jobs = [pool.submit(_train_alone, arm, models / arm.name, cache.folder, settings[arm.name], made[arm.name],
                                seed, force, config_yaml, threads) for arm in to_train]
            for job in concurrent.futures.as_completed(jobs):
                job.result()  # the first failure stops the run (the pool waits for the arm in training)
        force = False  # trained just now: read back below
    return {arm.name: ensure_arm(arm, models / arm.name, cache, settings[arm.name],
                                 lambda source, path=made[arm.name]: path, seed=seed, force=force, device=device,
                                 config_yaml=config_yaml)
            for arm in arms}


def _train_alone(arm: ArmSpec, folder: Path, cache_folder: Path, settings: SegmentationSettings,
                 samples: Path | None, seed: int, force: bool, config_yaml: str | None, threads: int) -> None:
    """One arm trained in a worker process of `ensure_arms`, on `threads` threads."""
    torch.set_num_threads(threads)
    ensure_arm(arm, folder, SliceCache.open(cache_folder), settings, lambda source: samples, seed=seed, force=force,
               device=torch.device("cpu"), config_yaml=config_yaml)


def _describe(arm: ArmSpec, cache: SliceCache, samples: Path | None) -> dict[str, Any]:
    """What the arm trains on, for the report (and, for real slices, which cache slices)."""
    training: dict[str, Any] = {"slices": 0}
    if arm.real is not None:
        real = arm.real
        indices = real_training_indices(cache, real.dataset, real.modality, real.volumes)
        subjects = sorted(set(cache.image_table["subject"][indices].tolist()))
        training["real"] = {"dataset": real.dataset, "modality": real.modality, "split": "train",
                            "volumes": subjects, "slices": int(indices.size), "image_indices": indices.tolist()}
        training["slices"] += int(indices.size)
    if samples is not None:
        header = json.loads((samples / "dataset.json").read_text())
        kind = "synthetic" if arm.synthetic is not None else "randomised"
        training[kind] = {**dataclasses.asdict(arm.generated), "folder": str(samples),
                          "slices": int(header["numTraining"])}
        training["slices"] += int(header["numTraining"])
    return training


def _discard_partial_run(path: Path, fingerprint: str, force: bool) -> None:
    """Drop the nnU-Net tree and exports of a run that must not be resumed: forced, or made with other inputs."""
    marker = path / "fingerprint.txt"
    if force or (marker.is_file() and marker.read_text().strip() != fingerprint):
        for part in ("nnunet", "real", "tensorboard"):
            shutil.rmtree(path / part, ignore_errors=True)
