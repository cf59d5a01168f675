"""The label LDM's training (conditioned diffusion over the label VAE's latent) and its validation metrics."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from brainspade.data.slice_cache import SliceCache
from brainspade.diffusion.objectives import make_scheduler, noisy_latents_and_target
from brainspade.engine import distributed
from brainspade.engine.checkpoint import schema_signature
from brainspade.engine.ema import make_ema, update_ema
from brainspade.engine.gradients import clip_finite_gradients
from brainspade.engine.logging import colourise_labels, log_image_columns
from brainspade.engine.runtime import Runtime
from brainspade.evaluation.metrics import lesion_present, tissue_volumes, volume_distances
from brainspade.generation.labels import LabelSampler, label_conditions
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.settings import LabelLDMSettings, LabelSamplingSettings
from brainspade.training.label_batches import (
    batch_indices,
    encode_means,
    lesion_positions,
    load_pv_maps,
    micro_batches,
)
from brainspade.training.loop import Checkpointer, Schedule, run_steps
from brainspade.training.models import build

COMMAND = "train-label-ldm"


def train_label_ldm(folder: Path, cache: SliceCache, train: np.ndarray, vae: LabelVAE, vae_fingerprint: str,
                    settings: LabelLDMSettings, sampling: LabelSamplingSettings, runtime: Runtime, seed: int,
                    config: dict) -> tuple[LabelSampler, dict]:
    """Train (resuming from folder's checkpoint); the sampler of the EMA weights and the runtime summary.

    Under torchrun: DDP over the ranks; rank 0 checkpoints and logs.
    """
    device = runtime.device
    vae = vae.to(device).eval()
    latents = encode_means(vae, load_pv_maps(cache, train), settings.encode_batch_size, device)
    # Rombach et al. 2022: scale latents to unit variance so the noise schedule fits them.
    scale_factor = float(1.0 / latents.std())
    latents = latents * scale_factor
    conditions = torch.from_numpy(label_conditions(cache, train))
    lesion_slices = lesion_positions(cache, train, settings.lesion_batch_fraction, "label_ldm.lesion_batch_fraction")

    args = {"unet": {**settings.model, "latent_channels": int(latents.shape[1]),
                     "num_lesions": len(cache.lesion_channels)}}
    unet = build(ConditionedDiffusionUNet, args["unet"], "label_ldm.model").to(device)
    scheduler = make_scheduler(settings.scheduler)
    ema = make_ema(unet)
    optimizer = torch.optim.Adam(unet.parameters(), lr=settings.lr)
    signature = {**schema_signature(cache.channels, cache.lesion_channels, cache.size, args),
                 "vae_fingerprint": vae_fingerprint, "objective": settings.objective}
    checkpointer = Checkpointer(folder, signature, {"unet": unet}, {"unet": optimizer}, {"unet": ema},
                                extra={"scheduler": settings.scheduler, "scale_factor": scale_factor}, config=config)
    trained_unet = runtime.prepare(unet)
    sampler = LabelSampler(vae, ema, scheduler, scale_factor, cache.channels, cache.lesion_channels, cache.size,
                           device)
    batch_size = distributed.local_batch_size(min(settings.batch_size, len(latents)), "label_ldm.batch_size")

    def train_step(step: int) -> dict[str, float]:
        trained_unet.train()
        index = batch_indices(len(latents), batch_size, lesion_slices, settings.lesion_batch_fraction)
        loss = ldm_training_step(
            trained_unet, optimizer, scheduler, runtime.inputs(latents[index]), conditions[index].to(device),
            settings.condition_dropout, settings.loss, settings.grad_clip, runtime.autocast, settings.accumulate,
        )
        update_ema(ema, unet, settings.ema_decay)
        return {"noise" if settings.objective == "ddpm" else "velocity": loss}

    def log_images(writer, step: int) -> None:
        log_samples(writer, sampler, cache, step, sampling)

    schedule = Schedule(settings.steps, settings.log_every, settings.checkpoint_every, settings.image_every)
    timer = run_steps(COMMAND, checkpointer, schedule, seed, device, train_step, log_images)
    return sampler, {**runtime.summary({"unet": unet}, timer, COMMAND), "scale_factor": scale_factor}


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
    accumulate: int = 1,
) -> float:
    """One denoising step on scaled latents; conditions are dropped with p = `condition_dropout` (CFG).

    The target follows the scheduler: the added noise ε for DDPM, the velocity for rectified flow.
    `accumulate`: forward and backward in this many micro-batches (noise, timesteps and dropped
    conditions drawn for the whole batch first), each loss weighted by its share, then one optimiser
    step: the batch's update with a micro-batch's activation memory.
    """
    noisy, timesteps, target = noisy_latents_and_target(scheduler, latents, torch.randn_like(latents))
    dropped = torch.rand(len(latents), device=latents.device) < condition_dropout
    distance = F.l1_loss if loss_name == "l1" else F.mse_loss
    optimizer.zero_grad(set_to_none=True)
    total = latents.new_zeros((), dtype=torch.float32)
    for part, share in micro_batches(len(latents), accumulate):
        with autocast():
            prediction = unet(noisy[part], timesteps[part], conditions[part], dropped[part])
        loss = distance(prediction.float(), target[part])
        (share * loss).backward()
        total = total + share * loss.detach()
    clip_finite_gradients(unet.parameters(), grad_clip, "label LDM", "label_ldm.lr")
    optimizer.step()
    return float(total)


def validation_metrics(sampler: LabelSampler, cache: SliceCache, sources: list[str], settings: LabelLDMSettings,
                       sampling: LabelSamplingSettings, seed: int) -> dict:
    """Per-channel W1 of tissue volumes (samples vs held-out; train vs held-out as the floor) and lesion rates.

    Samples are conditioned on held-out slices' real conditions; for the lesion rates, on the
    conditions of held-out slices whose lesion covers at least `lesion_eval_min_proportion` of
    the brain (smaller ones are often invisible in the argmax even in real maps), as they are
    and with every lesion proportion set to 0. Drawn with `sampling`, the very settings `sample`
    uses (sampler, steps, eta, guidance, background threshold), so the metrics describe its maps.
    """
    rng = np.random.default_rng(seed)
    n, batch = settings.eval_samples, settings.eval_batch_size
    test = cache.label_indices(split="test", datasets=sources)
    train = cache.label_indices(split="train", datasets=sources)
    test_volumes = tissue_volumes(load_pv_maps(cache, test))
    test_conditions = label_conditions(cache, test)
    chosen = rng.choice(len(test), size=n, replace=len(test) < n)
    samples = _sample(sampler, torch.from_numpy(test_conditions[chosen]), 10_000, batch, sampling)
    floor_rows = rng.choice(len(train), size=n, replace=len(train) < n)
    metrics: dict = {
        "eval_samples": n,
        "held_out_slices": len(test),
        "volume_w1_samples_vs_held_out": volume_distances(tissue_volumes(samples), test_volumes, cache.channels),
        "volume_w1_train_vs_held_out": volume_distances(tissue_volumes(load_pv_maps(cache, train[floor_rows])),
                                                        test_volumes, cache.channels),
        "lesion_rate_conditioned_on_lesion": {},
        "lesion_rate_conditioned_healthy": {},
        "lesion_rate_real_held_out": {},
        "label_sampling": {"sampler": sampling.sampler, "steps": sampling.steps, "eta": sampling.eta,
                           "guidance_scale": sampling.guidance_scale,
                           "background_threshold": sampling.background_threshold},
        "lesion_min_pixels": settings.lesion_min_pixels,
        "lesion_eval_min_proportion": settings.lesion_eval_min_proportion,
    }
    lesions = len(cache.lesion_channels)
    for k, name in enumerate(cache.lesion_channels):
        with_lesion = np.flatnonzero(test_conditions[:, k] >= settings.lesion_eval_min_proportion)
        if len(with_lesion) == 0:
            continue
        rows = test_conditions[rng.choice(with_lesion, size=n, replace=len(with_lesion) < n)]
        healthy = rows.copy()
        healthy[:, :lesions] = 0
        channel = cache.channels.index(name)
        minimum = settings.lesion_min_pixels
        lesion_samples = _sample(sampler, torch.from_numpy(rows), 20_000 + 1000 * k, batch, sampling)
        healthy_samples = _sample(sampler, torch.from_numpy(healthy), 20_000 + 1000 * k, batch, sampling)
        real = load_pv_maps(cache, test[with_lesion]).float()
        metrics["lesion_rate_conditioned_on_lesion"][name] = float(lesion_present(lesion_samples, channel, minimum).float().mean())
        metrics["lesion_rate_conditioned_healthy"][name] = float(lesion_present(healthy_samples, channel, minimum).float().mean())
        metrics["lesion_rate_real_held_out"][name] = float(lesion_present(real, channel, minimum).float().mean())
    return metrics


def _sample(sampler: LabelSampler, conditions: torch.Tensor, first_seed: int, batch: int,
            sampling: LabelSamplingSettings) -> torch.Tensor:
    chunks = []
    for start in range(0, len(conditions), batch):
        part = conditions[start : start + batch]
        seeds = list(range(first_seed + start, first_seed + start + len(part)))
        chunks.append(sampler.sample(part, seeds, sampling))
    return torch.cat(chunks)


def log_samples(writer, sampler: LabelSampler, cache: SliceCache, step: int, sampling: LabelSamplingSettings) -> None:
    """One grid column per condition: healthy, then each lesion channel at 5% of the brain; rows are seeds."""
    lesions = len(cache.lesion_channels)
    columns = []
    for k in range(-1, lesions):
        conditions = torch.zeros(4, lesions + 1)
        conditions[:, lesions] = torch.linspace(0.3, 0.7, 4)
        if k >= 0:
            conditions[:, k] = 0.05
        columns.append(colourise_labels(sampler.sample(conditions, [0, 1, 2, 3], sampling)))
    log_image_columns(writer, "samples: healthy | " + " | ".join(cache.lesion_channels), columns, step)
