"""Adversarial losses of the SPADE VAE-GAN: hinge (Lim & Ye 2017) and discriminator feature matching (pix2pixHD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), averaged over the discriminator's scales."""
    losses = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_scores, fake_scores, strict=True)]
    return torch.stack(losses).mean()


def hinge_generator_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """-mean D(fake) (SPADE's generator hinge; MONAI's `PatchAdversarialLoss` uses relu(1 - D) instead)."""
    return torch.stack([-f.mean() for f in fake_scores]).mean()


def feature_matching_loss(fake_features: list[list[torch.Tensor]], real_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminator's intermediate features of generated and real inputs, per scale and layer."""
    losses = [
        F.l1_loss(fake, real.detach())
        for fake_scale, real_scale in zip(fake_features, real_features, strict=True)
        for fake, real in zip(fake_scale, real_scale, strict=True)
    ]
    return torch.stack(losses).sum() / len(fake_features)
