"""Reverse-diffusion update steps as pure functions over a scheduler's cumulative alphas.

Every step has the same signature, `step(sample, noise_prediction, timestep, prev_timestep,
alphas_cumprod, noise, eta) -> previous sample`, and takes its fresh noise as an argument,
so that callers can draw it per sample (a sample then depends on its own seed only, not on
the batch it is drawn in). `prev_timestep < 0` means the final step (to x_0).
"""

from __future__ import annotations

import torch


def _alphas(alphas_cumprod: torch.Tensor, timestep: int, prev_timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
    alpha_t = alphas_cumprod[timestep]
    alpha_prev = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else alphas_cumprod.new_tensor(1.0)
    return alpha_t, alpha_prev


def ddim_step(
    sample: torch.Tensor,
    noise_prediction: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDIM update (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
    alpha_t, alpha_prev = _alphas(alphas_cumprod, timestep, prev_timestep)
    x0 = (sample - (1 - alpha_t).sqrt() * noise_prediction) / alpha_t.sqrt()
    sigma = eta * ((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)).clamp_min(0).sqrt()
    direction = (1 - alpha_prev - sigma**2).clamp_min(0).sqrt() * noise_prediction
    previous = alpha_prev.sqrt() * x0 + direction
    if eta > 0 and prev_timestep >= 0:
        previous = previous + sigma * noise
    return previous


def ddpm_step(
    sample: torch.Tensor,
    noise_prediction: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDPM ancestral step (Ho et al. 2020, Alg. 2, fixed small variance), respaced when steps are skipped; eta unused."""
    alpha_t, alpha_prev = _alphas(alphas_cumprod, timestep, prev_timestep)
    beta = 1 - alpha_t / alpha_prev
    x0 = (sample - (1 - alpha_t).sqrt() * noise_prediction) / alpha_t.sqrt()
    mean = (alpha_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_prev) * sample) / (1 - alpha_t)
    if prev_timestep < 0:
        return mean
    variance = beta * (1 - alpha_prev) / (1 - alpha_t)
    return mean + variance.clamp_min(0).sqrt() * noise


SAMPLERS = {"ddim": ddim_step, "ddpm": ddpm_step}


def sampling_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps from high to low ("leading" spacing, as DDIM and MONAI's DDIMScheduler)."""
    steps = max(1, min(steps, num_train_timesteps))
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]
