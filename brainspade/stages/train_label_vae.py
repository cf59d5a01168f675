"""`brainspade train-label-vae`: the KL autoencoder over PV maps, in W/label_vae."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import PatchDiscriminator
from omegaconf import DictConfig, OmegaConf

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from brainspade.engine.logging import colourise_labels, log_image_columns, progress, tensorboard_writer
from brainspade.engine.runtime import Runtime, StepTimer
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.generation.label_training import (
    dice_per_channel,
    inverse_frequency_weights,
    lesion_positions,
    load_pv_maps,
    random_batch,
    reconstruct,
    resume,
    vae_training_step,
)
from brainspade.losses.label_perceptual import make_label_perceptual_loss
from brainspade.models.label_vae import LabelVAE
from brainspade.stages.common import stage_path


def run(cfg: DictConfig) -> Path:
    """Train (or resume, or reuse) the label VAE; write checkpoint.pt, metrics.json and the manifest.

    Under torchrun: VAE and discriminator each in DDP, rank 0 checkpoints, logs and evaluates.
    """
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    settings = cfg.label_vae
    sources = list(cfg.data.source_datasets)
    fingerprint = config_fingerprint(settings, sources, finished_fingerprint(slices), int(cfg.seed))
    folder = StageFolder(stage_path(cfg, "label_vae"), fingerprint)
    runtime = Runtime.from_config(cfg)
    if not folder.prepare(cfg, force=bool(cfg.force)):
        print(f"[train-label-vae] {folder.path} is up to date")
        return folder.path
    if cfg.force and distributed.is_main():
        (folder.path / CHECKPOINT_NAME).unlink(missing_ok=True)
    distributed.barrier()

    seed_everything(int(cfg.seed))
    device = runtime.device
    cache = SliceCache.open(slices)
    train = generator_label_indices(cache, sources)
    train_pv = load_pv_maps(cache, train)
    model_args = {
        "num_channels": len(cache.channels),
        "channels": list(settings.channels),
        "num_res_blocks": int(settings.num_res_blocks),
        "latent_channels": int(settings.latent_channels),
        "norm_num_groups": int(settings.norm_num_groups),
        "bottleneck_attention": bool(settings.bottleneck_attention),
    }
    discriminator_args = {
        "spatial_dims": 2, "channels": int(settings.discriminator_channels), "in_channels": len(cache.channels),
        "out_channels": 1, "num_layers_d": int(settings.discriminator_layers),
    }
    vae = LabelVAE(**model_args).to(device)
    discriminator = PatchDiscriminator(**discriminator_args).to(device)
    perceptual = make_label_perceptual_loss(str(settings.perceptual_network)).to(device)
    models = {"vae": vae, "discriminator": discriminator}
    optimizers = {
        "vae": torch.optim.Adam(vae.parameters(), lr=float(settings.lr)),
        "discriminator": torch.optim.Adam(discriminator.parameters(), lr=float(settings.discriminator_lr)),
    }
    signature = {"channels": cache.channels, "size": list(cache.size)}
    step = resume(folder.path, signature, models, optimizers)
    if step and distributed.is_main():
        print(f"[train-label-vae] resuming at step {step}")
    trained_vae, trained_discriminator = runtime.prepare(vae), runtime.prepare(discriminator)

    def checkpoint() -> None:
        if not distributed.is_main():
            return
        save_checkpoint(
            folder.path / CHECKPOINT_NAME, step=step, models=models, optimizers=optimizers, signature=signature,
            config=OmegaConf.to_container(cfg, resolve=True),
            extra={"model_args": model_args, "discriminator_args": discriminator_args},
        )

    weights = {"kl": float(settings.kl_weight), "perceptual": float(settings.perceptual_weight),
               "adversarial": float(settings.adversarial_weight), "cross_entropy": float(settings.cross_entropy_weight)}
    lesion_fraction = float(settings.lesion_batch_fraction)
    lesion_slices = lesion_positions(cache, train, lesion_fraction, "label_vae.lesion_batch_fraction")
    channel_weights = None
    if settings.l1_channel_weights == "inverse_frequency":
        channel_weights = inverse_frequency_weights(train_pv).to(device)
    elif settings.l1_channel_weights is not None:
        raise BrainspadeError(
            f"label_vae.l1_channel_weights={settings.l1_channel_weights!r}: use null or inverse_frequency"
        )
    writer = tensorboard_writer(folder.path)
    steps = int(settings.steps)
    batch_size = distributed.local_batch_size(min(int(settings.batch_size), len(train_pv)), "label_vae.batch_size")
    bar = progress(total=steps, initial=step, desc="train-label-vae", unit="step")
    timer = StepTimer(device)
    while step < steps:
        distributed.seed_step(int(cfg.seed), step)
        trained_vae.train()
        trained_discriminator.train()
        batch = runtime.inputs(random_batch(train_pv, batch_size, device, lesion_slices, lesion_fraction))
        losses = vae_training_step(
            trained_vae, trained_discriminator, perceptual, optimizers["vae"], optimizers["discriminator"], batch,
            weights, adversarial=weights["adversarial"] > 0 and step >= int(settings.adversarial_start),
            grad_clip=float(settings.grad_clip), channel_weights=channel_weights, autocast=runtime.autocast,
        )
        step += 1
        bar.update(1)
        if step % int(settings.log_every) == 0 or step == steps:
            losses = distributed.mean_over_ranks(losses)
            if writer is not None:
                for name, value in losses.items():
                    writer.add_scalar(f"loss/{name}", value, step)
                writer.add_scalar("lr/vae", optimizers["vae"].param_groups[0]["lr"], step)
                writer.add_scalar("lr/discriminator", optimizers["discriminator"].param_groups[0]["lr"], step)
        if step % int(settings.image_every) == 0 or step == steps:
            _log_reconstructions(writer, vae, batch[:8], step)
        if step % int(settings.checkpoint_every) == 0 or step == steps:
            checkpoint()
        timer.tick()
    bar.close()
    if not (folder.path / CHECKPOINT_NAME).is_file():
        checkpoint()  # steps=0: still leave a loadable model behind

    run_info = runtime.summary({"vae": vae, "discriminator": discriminator}, timer, "train-label-vae")
    if distributed.is_main():  # the other ranks wait in finish()
        metrics = validation_metrics(vae, cache, sources, int(settings.eval_batch_size), device)
        metrics["runtime"] = run_info
        write_json_atomic(folder.path / "metrics.json", metrics)
        if writer is not None:
            writer.close()
        dice = ", ".join(f"{k} {v:.3f}" for k, v in metrics["dice"].items() if v is not None)
        print(f"[train-label-vae] held-out reconstruction Dice: {dice}")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"}, steps=step)


def validation_metrics(vae: LabelVAE, cache: SliceCache, sources: list[str], batch_size: int, device) -> dict:
    """Reconstruction Dice per channel on the held-out (test split) slices of the source data sets."""
    test = cache.label_indices(split="test", datasets=sources)
    real = load_pv_maps(cache, test).float()
    real = real / real.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return {
        "held_out_slices": len(test),
        "dice": dice_per_channel(reconstruct(vae, real, batch_size, device), real, cache.channels),
    }


@torch.no_grad()
def _log_reconstructions(writer, vae: LabelVAE, pv_maps: torch.Tensor, step: int) -> None:
    if writer is None:
        return
    vae.eval()
    reconstruction = vae.decode(vae.encode(pv_maps)[0])
    log_image_columns(writer, "real | reconstruction", [colourise_labels(pv_maps), colourise_labels(reconstruction)], step)

