"""The modality / data-set loss of brainSPADE (Fernandez et al. 2022, modification 1a)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modality_dataset_loss(
    modality_logits: torch.Tensor,
    dataset_logits: torch.Tensor,
    modality: torch.Tensor,
    dataset: torch.Tensor,
    alpha_modality: float,
    alpha_dataset: float,
) -> torch.Tensor:
    """alpha_mod * BCE(mod(generated), mod(style)) + alpha_dat * BCE(dat(generated), dat(style)).

    Targets are one-hot class indices of the *style* image. A data set index of -1 (a style
    from a data set the frozen classifier does not know) leaves only the modality term for
    that sample, as METHOD.md's protocol asks.
    """
    modality_target = F.one_hot(modality, modality_logits.shape[1]).float()
    loss = alpha_modality * F.binary_cross_entropy_with_logits(modality_logits, modality_target)
    known = dataset >= 0
    if alpha_dataset and bool(known.any()):
        dataset_target = F.one_hot(dataset[known], dataset_logits.shape[1]).float()
        loss = loss + alpha_dataset * F.binary_cross_entropy_with_logits(dataset_logits[known], dataset_target)
    return loss
