"""Gradient clipping that refuses to apply a step whose gradients are not finite."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from brainspade.errors import BrainspadeError


def clip_finite_gradients(parameters: Iterable[torch.Tensor], max_norm: float, network: str, rate_setting: str) -> float:
    """Clip the gradients to `max_norm` and return their norm; raise before the optimiser step if it is NaN or inf.

    A single non-finite gradient turns every weight into NaN, and training would go on saving NaN
    checkpoints over the good one. Stopping here leaves the weights and the last checkpoint as
    they were, so a rerun resumes from it (at the rerun's learning rate, `rate_setting`).
    """
    norm = nn.utils.clip_grad_norm_(list(parameters), max_norm)
    if not torch.isfinite(norm):
        raise BrainspadeError(
            f"{network}: the gradients are not finite ({float(norm)}); this step was not applied and the last "
            f"checkpoint is intact: rerun with a lower {rate_setting} to resume from it"
        )
    return float(norm)
