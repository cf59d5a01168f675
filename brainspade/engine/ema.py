"""Exponential moving average of a network's weights (the copy used for sampling)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from brainspade.engine.checkpoint import unwrap


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` to be updated with `update_ema`."""
    ema = copy.deepcopy(unwrap(model)).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (buffers are copied)."""
    source = unwrap(model)
    for ema_param, param in zip(ema.parameters(), source.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), source.buffers(), strict=True):
        ema_buffer.copy_(buffer)
