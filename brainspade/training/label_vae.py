"""The label VAE's training (KL autoencoder over PV maps + PatchGAN) and its held-out evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn

from brainspade.data.slice_cache import SliceCache
from brainspade.engine import distributed
from brainspade.engine.checkpoint import schema_signature
from brainspade.engine.gradients import clip_finite_gradients
from brainspade.engine.logging import colourise_labels, log_image_columns
from brainspade.engine.runtime import Runtime
from brainspade.evaluation.metrics import label_dice
from brainspade.losses.kl import kl_divergence
from brainspade.losses.label_perceptual import make_label_perceptual_loss
from brainspade.models.label_vae import LabelVAE
from brainspade.settings import LabelVAESettings
from brainspade.training.label_batches import (
    inverse_frequency_weights,
    lesion_positions,
    load_pv_maps,
    micro_batches,
    random_batch,
    reconstruct,
)
from brainspade.training.loop import Checkpointer, Schedule, run_steps
from brainspade.training.models import build

ADVERSARIAL = PatchAdversarialLoss(criterion="least_squares")
COMMAND = "train-label-vae"


def model_arguments(settings: LabelVAESettings, cache: SliceCache) -> dict[str, dict]:
    """Constructor arguments of the VAE and its discriminator: the config nodes plus what the data decides."""
    return {
        "vae": {**settings.model, "num_channels": len(cache.channels)},
        "discriminator": {"spatial_dims": 2, "out_channels": 1, **settings.discriminator,
                          "in_channels": len(cache.channels)},
    }


def train_label_vae(folder: Path, cache: SliceCache, train: np.ndarray, settings: LabelVAESettings,
                    runtime: Runtime, seed: int, config: dict) -> dict:
    """Train (resuming from folder's checkpoint) and leave the final checkpoint in `folder`; the runtime summary.

    Under torchrun: VAE and discriminator each in DDP; rank 0 checkpoints and logs.
    """
    device = runtime.device
    args = model_arguments(settings, cache)
    vae = build(LabelVAE, args["vae"], "label_vae.model").to(device)
    discriminator = build(PatchDiscriminator, args["discriminator"], "label_vae.discriminator").to(device)
    perceptual = make_label_perceptual_loss(settings.perceptual_network).to(device)
    models = {"vae": vae, "discriminator": discriminator}
    optimizers = {
        "vae": torch.optim.Adam(vae.parameters(), lr=settings.lr),
        "discriminator": torch.optim.Adam(discriminator.parameters(), lr=settings.discriminator_lr),
    }
    checkpointer = Checkpointer(folder, schema_signature(cache.channels, cache.lesion_channels, cache.size, args),
                                models, optimizers, config=config)
    train_pv = load_pv_maps(cache, train)
    trained_vae, trained_discriminator = runtime.prepare(vae), runtime.prepare(discriminator)
    weights = {"kl": settings.kl_weight, "perceptual": settings.perceptual_weight,
               "adversarial": settings.adversarial_weight, "cross_entropy": settings.cross_entropy_weight}
    lesion_slices = lesion_positions(cache, train, settings.lesion_batch_fraction, "label_vae.lesion_batch_fraction")
    channel_weights = (inverse_frequency_weights(train_pv).to(device)
                       if settings.l1_channel_weights == "inverse_frequency" else None)
    batch_size = distributed.local_batch_size(min(settings.batch_size, len(train_pv)), "label_vae.batch_size")
    last_batch: dict[str, torch.Tensor] = {}

    def train_step(step: int) -> dict[str, float]:
        trained_vae.train()
        trained_discriminator.train()
        batch = runtime.inputs(random_batch(train_pv, batch_size, device, lesion_slices,
                                            settings.lesion_batch_fraction))
        last_batch["pv_maps"] = batch
        return vae_training_step(
            trained_vae, trained_discriminator, perceptual, optimizers["vae"], optimizers["discriminator"], batch,
            weights, adversarial=weights["adversarial"] > 0 and step >= settings.adversarial_start,
            grad_clip=settings.grad_clip, channel_weights=channel_weights, autocast=runtime.autocast,
            accumulate=settings.accumulate,
        )

    @torch.no_grad()
    def log_images(writer, step: int) -> None:
        vae.eval()
        pv_maps = last_batch["pv_maps"][:8]
        reconstruction = vae.decode(vae.encode(pv_maps)[0])
        log_image_columns(writer, "real | reconstruction",
                          [colourise_labels(pv_maps), colourise_labels(reconstruction)], step)

    schedule = Schedule(settings.steps, settings.log_every, settings.checkpoint_every, settings.image_every)
    timer = run_steps(COMMAND, checkpointer, schedule, seed, device, train_step, log_images)
    return runtime.summary(models, timer, COMMAND)


def vae_training_step(
    vae: LabelVAE,
    discriminator: nn.Module,
    perceptual: nn.Module,
    vae_optimizer: torch.optim.Optimizer,
    discriminator_optimizer: torch.optim.Optimizer,
    pv_maps: torch.Tensor,
    weights: Mapping[str, float],
    adversarial: bool,
    grad_clip: float,
    channel_weights: torch.Tensor | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    accumulate: int = 1,
) -> dict[str, float]:
    """One step of L1 + KL + perceptual (+ least-squares PatchGAN) for the VAE, then one for the discriminator.

    `channel_weights` (C,) weight the L1 per PV channel (None: the paper's plain L1). A non-zero
    `weights["cross_entropy"]` adds the soft cross-entropy between the PV target and the decoded
    distribution: not in the paper, but its gradient does not vanish on thin or rare structures
    (CSF, lesions) the way an L1 on softmax outputs does, so short trainings learn them.
    `autocast` opens the mixed-precision context of the forward passes (losses are taken in fp32).
    `accumulate`: the batch goes through forward and backward in this many micro-batches, each loss
    weighted by its share, before each network's one optimiser step: the batch's update with a
    micro-batch's activation memory (the discriminator's batch norm sees micro-batch statistics).
    `vae` and `discriminator` may be DDP-wrapped: every parameter gets a gradient in each backward.
    """
    parts = micro_batches(len(pv_maps), accumulate)
    totals: dict[str, torch.Tensor] = {}
    reconstructions = []
    vae_optimizer.zero_grad(set_to_none=True)
    for part, share in parts:
        terms, reconstruction = _vae_terms(vae, discriminator, perceptual, pv_maps[part], weights, adversarial,
                                           channel_weights, autocast)
        (share * terms["total"]).backward()
        reconstructions.append(reconstruction.detach())
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + share * value.detach()
    clip_finite_gradients(vae.parameters(), grad_clip, "label VAE", "label_vae.lr")
    vae_optimizer.step()
    if adversarial:
        discriminator_optimizer.zero_grad(set_to_none=True)  # also drops what the VAE's adversarial term left there
        totals["discriminator"] = pv_maps.new_zeros(())
        for (part, share), reconstruction in zip(parts, reconstructions, strict=True):
            with autocast():
                fake_scores = discriminator(reconstruction)[-1]
                real_scores = discriminator(pv_maps[part])[-1]
            fake = ADVERSARIAL(fake_scores.float(), target_is_real=False, for_discriminator=True)
            real = ADVERSARIAL(real_scores.float(), target_is_real=True, for_discriminator=True)
            loss = 0.5 * (fake + real)
            (share * loss).backward()
            totals["discriminator"] = totals["discriminator"] + share * loss.detach()
        clip_finite_gradients(discriminator.parameters(), grad_clip, "label VAE discriminator",
                              "label_vae.discriminator_lr")
        discriminator_optimizer.step()
    return {name: float(value) for name, value in totals.items()}


def _vae_terms(vae: LabelVAE, discriminator: nn.Module, perceptual: nn.Module, pv_maps: torch.Tensor,
               weights: Mapping[str, float], adversarial: bool, channel_weights: torch.Tensor | None,
               autocast: Callable[[], AbstractContextManager]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The VAE's loss terms on one (micro-)batch, each a mean over it, with their weighted sum as "total"; and the
    reconstructed PV maps."""
    with autocast():
        logits, mu, sigma = vae(pv_maps)
    logits, mu, sigma = logits.float(), mu.float(), sigma.float()
    reconstruction = torch.softmax(logits, dim=1)
    l1 = (reconstruction - pv_maps).abs()
    if channel_weights is not None:
        l1 = l1 * channel_weights.view(1, -1, 1, 1)
    terms = {"l1": l1.mean(), "kl": kl_divergence(mu, torch.log(sigma.pow(2) + 1e-12), sigma.pow(2)), "perceptual": pv_maps.new_zeros(())}
    if weights["perceptual"] > 0:
        with autocast():
            terms["perceptual"] = perceptual(reconstruction, pv_maps).float()
    cross_entropy_weight = weights.get("cross_entropy", 0.0)
    if cross_entropy_weight > 0:
        terms["cross_entropy"] = -(pv_maps * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    terms["generator"] = pv_maps.new_zeros(())
    if adversarial:
        with autocast():
            scores = discriminator(reconstruction)[-1]
        terms["generator"] = ADVERSARIAL(scores.float(), target_is_real=True, for_discriminator=False)
    loss = terms["l1"] + weights["kl"] * terms["kl"] + weights["perceptual"] * terms["perceptual"]
    loss = loss + weights["adversarial"] * terms["generator"]
    if cross_entropy_weight > 0:
        loss = loss + cross_entropy_weight * terms["cross_entropy"]
    terms["total"] = loss
    return terms, reconstruction


def evaluate_label_vae(vae: LabelVAE, cache: SliceCache, sources: list[str], batch_size: int,
                       device: torch.device) -> dict:
    """Reconstruction Dice per channel on the held-out (test split) slices of the source data sets."""
    test = cache.label_indices(split="test", datasets=sources)
    real = load_pv_maps(cache, test).float()
    real = real / real.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return {
        "held_out_slices": len(test),
        "dice": label_dice(reconstruct(vae, real, batch_size, device), real, cache.channels),
    }
