"""Training steps, resume and validation metrics of the label VAE and label LDM (used by their stages)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from scipy.stats import wasserstein_distance
from torch import nn

from brainspade.data.slice_cache import SliceCache
from brainspade.diffusion.objectives import noisy_latents_and_target
from brainspade.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_training_state
from brainspade.engine.gradients import clip_finite_gradients
from brainspade.errors import BrainspadeError
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE

ADVERSARIAL = PatchAdversarialLoss(criterion="least_squares")


def load_pv_maps(cache: SliceCache, indices: np.ndarray) -> torch.Tensor:
    """PV maps of the given slices as one float16 tensor (N, C, H, W) in memory (batches are cut from it)."""
    return torch.from_numpy(np.ascontiguousarray(cache.pv_maps[np.asarray(indices, dtype=np.int64)]))


def as_pv(batch: torch.Tensor) -> torch.Tensor:
    """float16 storage -> float32 PV maps whose channels sum to 1 again."""
    batch = batch.float()
    return batch / batch.sum(dim=1, keepdim=True).clamp_min(1e-6)


def batch_indices(count: int, batch_size: int, enriched: torch.Tensor | None = None,
                  enriched_fraction: float = 0.0) -> torch.Tensor:
    """Positions of a random batch, drawn with torch's global RNG (checkpointed: a resumed run draws the same).

    With `enriched` (positions of rare slices, e.g. those with a lesion) a share `enriched_fraction`
    of the batch comes from them, the rest from all slices. For the LDM this changes how often each
    condition is seen, not what is learnt for a condition.
    """
    size = min(batch_size, count)
    index = torch.randint(0, count, (size,))
    if enriched is not None and len(enriched) and enriched_fraction > 0:
        rare = int(round(enriched_fraction * size))
        index[:rare] = enriched[torch.randint(0, len(enriched), (rare,))]
    return index


def random_batch(pv_maps: torch.Tensor, batch_size: int, device: torch.device,
                 enriched: torch.Tensor | None = None, enriched_fraction: float = 0.0) -> torch.Tensor:
    """A batch of PV maps (see `batch_indices`)."""
    return as_pv(pv_maps[batch_indices(len(pv_maps), batch_size, enriched, enriched_fraction)]).to(device)


def lesion_positions(cache: SliceCache, indices: np.ndarray, fraction: float, setting: str) -> torch.Tensor:
    """Positions within `indices` of the slices with any lesion (from the cache's lesion proportions).

    They are the enriched share of each batch (`batch_indices`); `fraction` is that share, checked here
    for both label stages and named by `setting` in the error.
    """
    if not 0 <= fraction <= 1:
        raise BrainspadeError(f"{setting}={fraction}: use a share between 0 and 1")
    if not cache.lesion_columns:
        return torch.zeros(0, dtype=torch.long)
    proportions = np.stack([cache.label_table[c][indices] for c in cache.lesion_columns], axis=1)
    return torch.from_numpy(np.flatnonzero(proportions.sum(axis=1) > 0))


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, I)) summed over latent elements, averaged over the batch (as MONAI's tutorials)."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(dim=1).mean()


def inverse_frequency_weights(pv_maps: torch.Tensor, max_weight: float = 50.0) -> torch.Tensor:
    """Per-channel L1 weights (C,) ~ 1 / channel frequency, mean 1, capped at `max_weight`.

    Rare channels (lesions: a few percent of a tenth of the slices) otherwise contribute almost
    nothing to a plain L1 and the VAE learns to drop them.
    """
    frequency = pv_maps.float().mean(dim=(0, 2, 3)).clamp_min(1e-6)
    weights = (1.0 / frequency).clamp_max(max_weight * (1.0 / frequency).min())
    return weights / weights.mean()


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
) -> dict[str, float]:
    """One step of L1 + KL + perceptual (+ least-squares PatchGAN) for the VAE, then one for the discriminator.

    `channel_weights` (C,) weight the L1 per PV channel (None: the paper's plain L1). A non-zero
    `weights["cross_entropy"]` adds the soft cross-entropy between the PV target and the decoded
    distribution: not in the paper, but its gradient does not vanish on thin or rare structures
    (CSF, lesions) the way an L1 on softmax outputs does, so short trainings learn them.
    `autocast` opens the mixed-precision context of the forward passes (losses are taken in fp32).
    `vae` and `discriminator` may be DDP-wrapped: every parameter gets a gradient in each backward.
    """
    with autocast():
        logits, mu, sigma = vae(pv_maps)
    logits, mu, sigma = logits.float(), mu.float(), sigma.float()
    reconstruction = torch.softmax(logits, dim=1)
    l1 = (reconstruction - pv_maps).abs()
    if channel_weights is not None:
        l1 = l1 * channel_weights.view(1, -1, 1, 1)
    terms = {"l1": l1.mean(), "kl": kl_loss(mu, sigma), "perceptual": pv_maps.new_zeros(())}
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
    vae_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_finite_gradients(vae.parameters(), grad_clip, "label VAE", "label_vae.lr")
    vae_optimizer.step()
    terms["total"] = loss.detach()
    if adversarial:
        with autocast():
            fake_scores = discriminator(reconstruction.detach())[-1]
            real_scores = discriminator(pv_maps)[-1]
        fake = ADVERSARIAL(fake_scores.float(), target_is_real=False, for_discriminator=True)
        real = ADVERSARIAL(real_scores.float(), target_is_real=True, for_discriminator=True)
        terms["discriminator"] = 0.5 * (fake + real)
        discriminator_optimizer.zero_grad(set_to_none=True)
        terms["discriminator"].backward()
        clip_finite_gradients(discriminator.parameters(), grad_clip, "label VAE discriminator",
                              "label_vae.discriminator_lr")
        discriminator_optimizer.step()
    return {name: float(value.detach()) for name, value in terms.items()}


def ldm_training_step(
    unet: ConditionedDiffusionUNet,
    optimizer: torch.optim.Optimizer,
    scheduler: DDPMScheduler | RFlowScheduler,
    latents: torch.Tensor,
    conditions: torch.Tensor,
    condition_dropout: float,
    loss_name: str,
    grad_clip: float,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """One denoising step on scaled latents; conditions are dropped with p = `condition_dropout` (CFG).

    The target follows the scheduler: the added noise ε for DDPM, the velocity for rectified flow.
    """
    noisy, timesteps, target = noisy_latents_and_target(scheduler, latents, torch.randn_like(latents))
    dropped = torch.rand(len(latents), device=latents.device) < condition_dropout
    with autocast():
        prediction = unet(noisy, timesteps, conditions, dropped)
    prediction = prediction.float()
    loss = F.l1_loss(prediction, target) if loss_name == "l1" else F.mse_loss(prediction, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_finite_gradients(unet.parameters(), grad_clip, "label LDM", "label_ldm.lr")
    optimizer.step()
    return float(loss.detach())


def resume(
    folder: Path,
    signature: Mapping[str, Any],
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    ema_models: Mapping[str, nn.Module] | None = None,
) -> int:
    """Restore the stage folder's last checkpoint if there is one (refused if made for another schema); the step."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return 0
    state = load_checkpoint(path, expected_signature=signature)
    return restore_training_state(state, models=models, optimizers=optimizers, ema_models=ema_models)


@torch.no_grad()
def encode_means(vae: LabelVAE, pv_maps: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Latent means of every PV map (the LDM trains on these)."""
    vae.eval()
    chunks = [vae.encode(as_pv(pv_maps[i : i + batch_size]).to(device))[0].cpu() for i in range(0, len(pv_maps), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def reconstruct(vae: LabelVAE, pv_maps: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    vae.eval()
    chunks = [vae.decode(vae.encode(as_pv(pv_maps[i : i + batch_size]).to(device))[0]).cpu()
              for i in range(0, len(pv_maps), batch_size)]
    return torch.cat(chunks)


def dice_per_channel(predicted: torch.Tensor, real: torch.Tensor, channels: Sequence[str]) -> dict[str, float | None]:
    """Dice of the argmax labels per channel, pooled over all slices (None where a channel is absent in both)."""
    predicted_labels, real_labels = predicted.argmax(dim=1), real.argmax(dim=1)
    scores: dict[str, float | None] = {}
    for index, name in enumerate(channels):
        a, b = predicted_labels == index, real_labels == index
        total = int(a.sum() + b.sum())
        scores[name] = None if total == 0 else 2.0 * int((a & b).sum()) / total
    return scores


def tissue_volumes(pv_maps: torch.Tensor) -> np.ndarray:
    """Share of the slice each channel covers (N, C): the 'tissue volume per slice'."""
    return pv_maps.float().mean(dim=(2, 3)).numpy()


def volume_distances(a: np.ndarray, b: np.ndarray, channels: Sequence[str]) -> dict[str, float]:
    """1-D Wasserstein distance per channel between two sets of per-slice tissue volumes."""
    return {name: float(wasserstein_distance(a[:, i], b[:, i])) for i, name in enumerate(channels)}


def lesion_present(pv_maps: torch.Tensor, channel: int, min_pixels: int) -> torch.Tensor:
    """Per slice: does the channel win the argmax in at least `min_pixels` pixels?"""
    return (pv_maps.argmax(dim=1) == channel).flatten(1).sum(dim=1) >= min_pixels
