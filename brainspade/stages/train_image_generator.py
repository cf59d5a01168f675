"""`brainspade train-image-generator`: the SPADE VAE-GAN in W/image_generator (metrics.json: evaluation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.datasets import generator_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.settings import fingerprinted
from brainspade.stages.config import open_stage_folder, resolved_config, run_settings, section, stage_path
from brainspade.training.image_generator import evaluate_image_generator, train_image_generator


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    settings = section(cfg, "image_generator")  # bad weights fail here, in one line, before anything else
    data = section(cfg, "data")
    runtime_settings = section(cfg, "runtime")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    inputs = [finished_fingerprint(slices)]
    classifier_folder = stage_path(cfg, "modisc")
    if settings.needs_classifier:
        require_complete(classifier_folder, "modality classifier", "train-modisc")
        inputs.append(finished_fingerprint(classifier_folder))
    # precision=auto is fp32 here: at its batch of 8 the SPADE is launch-bound, and bf16 autocast's casts made it
    # slower on both GPU runs (H200: 4.8 vs 5.7 and 5.7 vs 6.7 steps/s; benchmarks/GPU.md). Under torchrun: DDP,
    # rank 0 checkpoints and evaluates.
    runtime = Runtime.create(runtime_settings, run_.device, auto_bf16=False)
    fingerprint = config_fingerprint(fingerprinted(data), settings, run_.seed, *inputs)
    folder = open_stage_folder(cfg, "image_generator", "train-image-generator", fingerprint)
    if folder is None:
        return stage_path(cfg, "image_generator")
    seed_everything(run_.seed)
    device = runtime.device
    cache = SliceCache.open(slices)
    sources = data.source_datasets
    classifier = (ModalityClassifier.from_folder(classifier_folder, device, cache.channels)
                  if settings.needs_classifier else None)
    run_info = train_image_generator(folder.path, cache, generator_image_indices(cache, sources), sources, classifier,
                                     settings, runtime, run_.seed, resolved_config(cfg))
    if not distributed.is_main():  # evaluation is rank 0's; the others wait in finish()
        return folder.finish()
    # The evaluation's judge is the classifier whenever one is trained, even if no loss used it.
    judge = classifier or (ModalityClassifier.from_folder(classifier_folder, device, cache.channels)
                           if StageFolder(classifier_folder, "").is_complete() else None)
    generator = ImageGenerator.from_checkpoint(folder.path / CHECKPOINT_NAME, device)  # the manifest comes after
    metrics = evaluate_image_generator(generator, judge, cache, sources, settings.evaluation.max_images,
                                       settings.evaluation.batch_size, run_.seed)
    metrics["weights"] = dataclasses.asdict(settings.weights)
    metrics["classifier_fingerprint"] = inputs[1] if settings.needs_classifier else None
    metrics["runtime"] = run_info
    write_json_atomic(folder.path / "metrics.json", metrics)
    paired = metrics["paired"]
    print(f"[train-image-generator] held-out paired SSIM {paired['ssim']:.3f}, PSNR {paired['psnr']:.2f} dB, "
          f"brain MAE {paired['mae_brain']:.3f} ({paired['n']} slices)")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"},
                         classifier_fingerprint=metrics["classifier_fingerprint"], steps=settings.steps)
