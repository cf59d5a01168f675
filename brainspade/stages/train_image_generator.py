"""`brainspade train-image-generator`: the SPADE VAE-GAN in W/image_generator (metrics.json: evaluation)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.image_training import (
    evaluate_image_generator,
    needs_classifier,
    train_image_generator,
    validate_weights,
)
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.stages.common import stage_path


def run(cfg: DictConfig) -> Path:
    settings = cfg.image_generator
    validate_weights(settings.weights)  # before anything else, so a bad config fails in one line at once
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    inputs = [finished_fingerprint(slices)]
    classifier_folder = stage_path(cfg, "modisc")
    use_classifier = needs_classifier(settings)
    if use_classifier:
        require_complete(classifier_folder, "modality classifier", "train-modisc")
        inputs.append(finished_fingerprint(classifier_folder))
    folder = StageFolder(stage_path(cfg, "image_generator"),
                         config_fingerprint(cfg.data, settings, int(cfg.seed), *inputs))
    runtime = Runtime.from_config(cfg)  # under torchrun: DDP, rank 0 checkpoints and evaluates
    if not folder.prepare(cfg, force=bool(cfg.force)):
        print(f"[train-image-generator] {folder.path} is up to date")
        return folder.path
    seed_everything(int(cfg.seed))
    device = runtime.device
    cache = SliceCache.open(slices)
    run_info = train_image_generator(cfg, cache, folder.path, classifier_folder if use_classifier else None, runtime)
    if not distributed.is_main():  # evaluation is rank 0's; the others wait in finish()
        return folder.finish()
    # The evaluation's judge is the classifier whenever one is trained, even if no loss used it.
    judge = ModalityClassifier.load(classifier_folder, device) if StageFolder(classifier_folder, "").is_complete() else None
    generator = ImageGenerator.from_checkpoint(folder.path / CHECKPOINT_NAME, device)  # the manifest comes after
    metrics = evaluate_image_generator(
        generator, judge, cache, list(cfg.data.source_datasets),
        int(settings.evaluation.max_images), int(settings.evaluation.batch_size), int(cfg.seed))
    metrics["weights"] = {k: float(v) for k, v in settings.weights.items()}
    metrics["classifier_fingerprint"] = inputs[1] if use_classifier else None
    metrics["runtime"] = run_info
    write_json_atomic(folder.path / "metrics.json", metrics)
    paired = metrics["paired"]
    print(f"[train-image-generator] held-out paired SSIM {paired['ssim']:.3f}, PSNR {paired['psnr']:.2f} dB, "
          f"brain MAE {paired['mae_brain']:.3f} ({paired['n']} slices)")
    return folder.finish({"checkpoint": "checkpoint.pt", "metrics": "metrics.json"},
                         classifier_fingerprint=metrics["classifier_fingerprint"], steps=int(settings.steps))

