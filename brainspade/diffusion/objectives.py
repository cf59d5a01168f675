"""Training objectives of the label LDM: what the denoiser sees and what it must predict.

- ddpm (the paper): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with t uniform in [0, T); target eps.
- rflow (rectified flow, Liu et al. 2023; MONAI `RFlowScheduler`): x_t = (1 - t/T) x_0 + (t/T) eps;
  target the velocity x_0 - eps, as MONAI's scheduler defines it (its `step` adds v * dt).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

OBJECTIVES = ("ddpm", "rflow")


def make_scheduler(scheduler_args: Mapping) -> DDPMScheduler | RFlowScheduler:
    """The MONAI scheduler of an objective (`scheduler_args["objective"]`, ddpm when absent: older checkpoints)."""
    objective = str(scheduler_args.get("objective", "ddpm"))
    if objective == "rflow":
        # Uniform timesteps and no resolution shift: a 2-D latent of a few thousand values needs none.
        return RFlowScheduler(num_train_timesteps=int(scheduler_args["num_train_timesteps"]),
                              use_discrete_timesteps=True, sample_method="uniform")
    if objective != "ddpm":
        raise ValueError(f"objective {objective!r}: use one of {OBJECTIVES}")
    return DDPMScheduler(
        num_train_timesteps=int(scheduler_args["num_train_timesteps"]),
        schedule=str(scheduler_args["schedule"]),
        beta_start=float(scheduler_args["beta_start"]),
        beta_end=float(scheduler_args["beta_end"]),
        prediction_type="epsilon",
    )


def objective_of(scheduler: DDPMScheduler | RFlowScheduler) -> str:
    return "rflow" if isinstance(scheduler, RFlowScheduler) else "ddpm"


def noisy_latents_and_target(
    scheduler: DDPMScheduler | RFlowScheduler, latents: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, their integer timesteps (B,), the prediction target) for one training step."""
    if isinstance(scheduler, RFlowScheduler):
        timesteps = scheduler.sample_timesteps(latents)
        return scheduler.add_noise(latents, noise, timesteps), timesteps, latents - noise
    timesteps = torch.randint(0, scheduler.num_train_timesteps, (len(latents),), device=latents.device)
    return scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps), timesteps, noise


def schedule_table(scheduler: DDPMScheduler | RFlowScheduler) -> torch.Tensor:
    """The per-timestep table the sampler steps read: cumulative alphas a_t (ddpm), noise levels t/T for t = 0..T (rflow)."""
    if isinstance(scheduler, RFlowScheduler):
        return torch.arange(scheduler.num_train_timesteps + 1, dtype=torch.float32) / scheduler.num_train_timesteps
    return scheduler.alphas_cumprod.to(torch.float32)
