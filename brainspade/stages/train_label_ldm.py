"""`brainspade train-label-ldm`: the conditioned latent diffusion model over label latents, in W/label_ldm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.diffusion.objectives import OBJECTIVES, make_scheduler
from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from brainspade.engine.ema import make_ema, update_ema
from brainspade.engine.logging import colourise_labels, log_image_columns, progress, tensorboard_writer
from brainspade.engine.runtime import Runtime, StepTimer
from brainspade.engine.seeding import seed_everything
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.generation.label_training import (
    batch_indices,
    encode_means,
    ldm_training_step,
    lesion_positions,
    lesion_present,
    load_pv_maps,
    resume,
    tissue_volumes,
    volume_distances,
)
from brainspade.generation.labels import LabelSampler, label_conditions
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.stages.common import stage_path


def run(cfg: DictConfig) -> Path:
    """Train (or resume, or reuse) the label LDM; write checkpoint.pt (with EMA), metrics.json and the manifest.

    Under torchrun: DDP over the ranks, rank 0 checkpoints, logs and evaluates.
    """
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    vae_folder = require_complete(stage_path(cfg, "label_vae"), "label VAE", "train-label-vae")
    settings = cfg.label_ldm
    objective = str(settings.objective)
    if objective not in OBJECTIVES:
        raise BrainspadeError(f"label_ldm.objective={objective}: use one of {', '.join(OBJECTIVES)}")
    sources = list(cfg.data.source_datasets)
    vae_fingerprint = finished_fingerprint(vae_folder)
    fingerprint = config_fingerprint(settings, sources, finished_fingerprint(slices), vae_fingerprint, int(cfg.seed))
    folder = StageFolder(stage_path(cfg, "label_ldm"), fingerprint)
    runtime = Runtime.from_config(cfg)
    if not folder.prepare(cfg, force=bool(cfg.force)):
        print(f"[train-label-ldm] {folder.path} is up to date")
        return folder.path
    if cfg.force and distributed.is_main():
        (folder.path / CHECKPOINT_NAME).unlink(missing_ok=True)
    distributed.barrier()

    seed_everything(int(cfg.seed))
    device = runtime.device
    cache = SliceCache.open(slices)
    vae_state = load_checkpoint(vae_folder / CHECKPOINT_NAME)
    vae = LabelVAE(**vae_state["extra"]["model_args"]).to(device).eval()
    vae.load_state_dict(vae_state["models"]["vae"])

    train = generator_label_indices(cache, sources)
    latents = encode_means(vae, load_pv_maps(cache, train), int(settings.encode_batch_size), device)
    # Rombach et al. 2022: scale latents to unit variance so the noise schedule fits them.
    scale_factor = float(1.0 / latents.std())
    latents = latents * scale_factor
    conditions = torch.from_numpy(label_conditions(cache, train))
    lesion_fraction = float(settings.lesion_batch_fraction)
    lesion_slices = lesion_positions(cache, train, lesion_fraction, "label_ldm.lesion_batch_fraction")

    model_args = {
        "latent_channels": int(latents.shape[1]),
        "num_lesions": len(cache.lesion_channels),
        "channels": list(settings.channels),
        "attention_levels": [bool(a) for a in settings.attention_levels],
        "num_res_blocks": int(settings.num_res_blocks),
        "num_head_channels": int(settings.num_head_channels),
        "norm_num_groups": int(settings.norm_num_groups),
        "condition_dim": int(settings.condition_dim),
    }
    scheduler_args = {key: settings[key] for key in ("objective", "num_train_timesteps", "schedule", "beta_start", "beta_end")}
    scheduler_args = OmegaConf.to_container(OmegaConf.create(scheduler_args), resolve=True)
    scheduler = make_scheduler(scheduler_args)
    unet = ConditionedDiffusionUNet(**model_args).to(device)
    ema = make_ema(unet)
    optimizer = torch.optim.Adam(unet.parameters(), lr=float(settings.lr))
    signature = {"channels": cache.channels, "lesion_channels": cache.lesion_channels, "size": list(cache.size),
                 "vae_fingerprint": vae_fingerprint, "objective": objective}
    step = resume(folder.path, signature, {"unet": unet}, {"unet": optimizer}, {"unet": ema})
    if step and distributed.is_main():
        print(f"[train-label-ldm] resuming at step {step}")
    trained_unet = runtime.prepare(unet)
    extra = {
        "model_args": model_args, "scheduler": scheduler_args, "scale_factor": scale_factor,
        "channels": cache.channels, "lesion_channels": cache.lesion_channels, "size": list(cache.size),
        "vae_fingerprint": vae_fingerprint,
    }

    def checkpoint() -> None:
        if not distributed.is_main():
            return
        save_checkpoint(
            folder.path / CHECKPOINT_NAME, step=step, models={"unet": unet}, optimizers={"unet": optimizer},
            ema_models={"unet": ema}, signature=signature, config=OmegaConf.to_container(cfg, resolve=True), extra=extra,
        )

    sampler = LabelSampler(vae, ema, scheduler, scale_factor, cache.channels, cache.lesion_channels, cache.size, device)
    writer = tensorboard_writer(folder.path)
    steps = int(settings.steps)
    batch_size = distributed.local_batch_size(min(int(settings.batch_size), len(latents)), "label_ldm.batch_size")
    bar = progress(total=steps, initial=step, desc="train-label-ldm", unit="step")
    timer = StepTimer(device)
    while step < steps:
        distributed.seed_step(int(cfg.seed), step)
        trained_unet.train()
        index = batch_indices(len(latents), batch_size, lesion_slices, lesion_fraction)
        loss = ldm_training_step(
            trained_unet, optimizer, scheduler, runtime.inputs(latents[index]), conditions[index].to(device),
            float(settings.condition_dropout), str(settings.loss), float(settings.grad_clip), runtime.autocast,
        )
        update_ema(ema, unet, float(settings.ema_decay))
        step += 1
        bar.update(1)
        if step % int(settings.log_every) == 0 or step == steps:
            loss = distributed.mean_over_ranks({"loss": loss})["loss"]
            if writer is not None:
                writer.add_scalar(f"loss/{'noise' if objective == 'ddpm' else 'velocity'}", loss, step)
                writer.add_scalar("lr/unet", optimizer.param_groups[0]["lr"], step)
        if step % int(settings.image_every) == 0 or step == steps:
            _log_samples(writer, sampler, cache, step, int(settings.eval_steps))
        if step % int(settings.checkpoint_every) == 0 or step == steps:
            checkpoint()
        timer.tick()
    bar.close()
    if not (folder.path / CHECKPOINT_NAME).is_file():
        checkpoint()

    run_info = runtime.summary({"unet": unet}, timer, "train-label-ldm")
    if distributed.is_main():  # the other ranks wait in finish()
        metrics = validation_metrics(sampler, cache, sources, settings, int(cfg.seed),
                                     float(cfg.label_sampling.guidance_scale))
        metrics["scale_factor"] = scale_factor
        metrics["runtime"] = run_info
        write_json_atomic(folder.path / "metrics.json", metrics)
        if writer is not None:
            writer.close()
        print(f"[train-label-ldm] lesion rate with / without lesion condition: "
              f"{metrics['lesion_rate_conditioned_on_lesion']} / {metrics['lesion_rate_conditioned_healthy']}")
    return folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"}, steps=step)


def validation_metrics(sampler: LabelSampler, cache: SliceCache, sources: list[str], settings, seed: int,
                       guidance_scale: float = 1.0) -> dict:
    """Per-channel W1 of tissue volumes (samples vs held-out; train vs held-out as the floor) and lesion rates.

    Samples are conditioned on held-out slices' real conditions; for the lesion rates, on the
    conditions of held-out slices whose lesion covers at least `lesion_eval_min_proportion` of
    the brain (smaller ones are often invisible in the argmax even in real maps), as they are
    and with every lesion proportion set to 0. Sampled with the guidance scale `sample` will use.
    """
    rng = np.random.default_rng(seed)
    n, steps, batch = int(settings.eval_samples), int(settings.eval_steps), int(settings.eval_batch_size)
    test = cache.label_indices(split="test", datasets=sources)
    train = cache.label_indices(split="train", datasets=sources)
    test_volumes = tissue_volumes(load_pv_maps(cache, test))
    test_conditions = label_conditions(cache, test)
    chosen = rng.choice(len(test), size=n, replace=len(test) < n)
    samples = _sample(sampler, torch.from_numpy(test_conditions[chosen]), 10_000, steps, batch, guidance_scale)
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
        "guidance_scale": guidance_scale,
        "lesion_min_pixels": int(settings.lesion_min_pixels),
        "lesion_eval_min_proportion": float(settings.lesion_eval_min_proportion),
    }
    lesions = len(cache.lesion_channels)
    for k, name in enumerate(cache.lesion_channels):
        with_lesion = np.flatnonzero(test_conditions[:, k] >= float(settings.lesion_eval_min_proportion))
        if len(with_lesion) == 0:
            continue
        rows = test_conditions[rng.choice(with_lesion, size=n, replace=len(with_lesion) < n)]
        healthy = rows.copy()
        healthy[:, :lesions] = 0
        channel = cache.channels.index(name)
        minimum = int(settings.lesion_min_pixels)
        lesion_samples = _sample(sampler, torch.from_numpy(rows), 20_000 + 1000 * k, steps, batch, guidance_scale)
        healthy_samples = _sample(sampler, torch.from_numpy(healthy), 20_000 + 1000 * k, steps, batch, guidance_scale)
        real = load_pv_maps(cache, test[with_lesion]).float()
        metrics["lesion_rate_conditioned_on_lesion"][name] = float(lesion_present(lesion_samples, channel, minimum).float().mean())
        metrics["lesion_rate_conditioned_healthy"][name] = float(lesion_present(healthy_samples, channel, minimum).float().mean())
        metrics["lesion_rate_real_held_out"][name] = float(lesion_present(real, channel, minimum).float().mean())
    return metrics


def _sample(sampler: LabelSampler, conditions: torch.Tensor, first_seed: int, steps: int, batch: int,
            guidance_scale: float) -> torch.Tensor:
    chunks = []
    for start in range(0, len(conditions), batch):
        part = conditions[start : start + batch]
        seeds = list(range(first_seed + start, first_seed + start + len(part)))
        chunks.append(sampler.sample(part, seeds, steps=steps, guidance_scale=guidance_scale))
    return torch.cat(chunks)


def _log_samples(writer, sampler: LabelSampler, cache: SliceCache, step: int, steps: int) -> None:
    """One grid column per condition: healthy, then each lesion channel at 5% of the brain; rows are seeds."""
    if writer is None:
        return
    lesions = len(cache.lesion_channels)
    columns = []
    for k in range(-1, lesions):
        conditions = torch.zeros(4, lesions + 1)
        conditions[:, lesions] = torch.linspace(0.3, 0.7, 4)
        if k >= 0:
            conditions[:, k] = 0.05
        columns.append(colourise_labels(sampler.sample(conditions, [0, 1, 2, 3], steps=steps)))
    log_image_columns(writer, "samples: healthy | " + " | ".join(cache.lesion_channels), columns, step)
