"""Reverse-diffusion update steps as pure functions over a per-timestep schedule table.

Every step has the same signature, `step(sample, model_output, timestep, prev_timestep,
schedule, noise, eta) -> previous sample`: `model_output` is what the network was trained to
predict for its objective (ε for ddpm/ddim, the velocity for rflow), `schedule` the table of
`diffusion.objectives.schedule_table` (cumulative alphas, or rectified flow's noise levels).
Steps take their fresh noise as an argument, so that callers can draw it per sample (a sample
then depends on its own seed only, not on the batch it is drawn in). `prev_timestep < 0` means
the final step (to x_0). `SAMPLERS` maps a name to (step, objective it needs).
"""

from __future__ import annotations

import torch


def _alphas(alphas_cumprod: torch.Tensor, timestep: int, prev_timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
    alpha_t = alphas_cumprod[timestep]
    alpha_prev = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else alphas_cumprod.new_tensor(1.0)
    return alpha_t, alpha_prev


def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    schedule: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDIM update (Song et al. 2021, eq. 12) from predicted noise; eta = 0 is deterministic, 1 matches DDPM's variance."""
    alpha_t, alpha_prev = _alphas(schedule, timestep, prev_timestep)
    x0 = (sample - (1 - alpha_t).sqrt() * model_output) / alpha_t.sqrt()
    sigma = eta * ((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)).clamp_min(0).sqrt()
    direction = (1 - alpha_prev - sigma**2).clamp_min(0).sqrt() * model_output
    previous = alpha_prev.sqrt() * x0 + direction
    if eta > 0 and prev_timestep >= 0:
        previous = previous + sigma * noise
    return previous


def ddpm_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    schedule: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDPM ancestral step (Ho et al. 2020, Alg. 2, fixed small variance), respaced when steps are skipped; eta unused."""
    alpha_t, alpha_prev = _alphas(schedule, timestep, prev_timestep)
    beta = 1 - alpha_t / alpha_prev
    x0 = (sample - (1 - alpha_t).sqrt() * model_output) / alpha_t.sqrt()
    mean = (alpha_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_prev) * sample) / (1 - alpha_t)
    if prev_timestep < 0:
        return mean
    variance = beta * (1 - alpha_prev) / (1 - alpha_t)
    return mean + variance.clamp_min(0).sqrt() * noise


def rflow_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    schedule: torch.Tensor,
    noise: torch.Tensor | None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Rectified-flow Euler step (Liu et al. 2023; MONAI RFlowScheduler.step): x += v (s_t - s_prev); noise, eta unused."""
    level = schedule[timestep]
    prev_level = schedule[prev_timestep] if prev_timestep >= 0 else schedule.new_tensor(0.0)
    return sample + model_output * (level - prev_level)


# name -> (step function, the training objective whose network output it expects)
SAMPLERS = {"ddim": (ddim_step, "ddpm"), "ddpm": (ddpm_step, "ddpm"), "rflow": (rflow_step, "rflow")}
DEFAULT_SAMPLER = {"ddpm": "ddim", "rflow": "rflow"}  # the paper's DDIM for ddpm, Euler for rflow


def sampling_timesteps(num_train_timesteps: int, steps: int, sampler: str = "ddim") -> list[int]:
    """Timesteps from high to low, `steps` of them.

    ddim/ddpm: evenly spaced from 0 ("leading" spacing, as DDIM and MONAI's DDIMScheduler);
    rflow: T, T - T/n, ..., T/n (MONAI's RFlowScheduler.set_timesteps), the last step going to 0.
    """
    steps = max(1, min(steps, num_train_timesteps))
    if sampler == "rflow":
        return [int(round((1.0 - i / steps) * num_train_timesteps)) for i in range(steps)]
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]
