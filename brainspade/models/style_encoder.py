"""The style encoder E_s of the SPADE VAE-GAN: an image -> the mean and log-variance of a small style code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class StyleEncoder(nn.Module):
    """Strided convolutions, then global pooling, then linear maps to (mu, log sigma^2).

    As in SPADE (Park et al. 2019) and brainSPADE (Fernandez et al. 2022), but the spatial
    map is pooled globally (mean and standard deviation per channel) instead of flattened:
    the code then cannot store *where* things are, only how they look, which is what the
    style/content separation and the style-consistency loss ask of it. No normalisation
    layers: an instance-normalised feature map has (nearly) the same per-channel mean and
    standard deviation for every image, so pooling it gives an almost constant code (the
    encoder collapsed that way in training, benchmarks/image_generator.md); without norm
    layers every sample also stays independent of its batch.

    Args:
        z_dim: size of the style code (paper: 16).
        channels: output channels of each stride-2 convolution.
        in_channels: image channels.
    """

    def __init__(self, z_dim: int, channels: Sequence[int], in_channels: int = 1):
        super().__init__()
        blocks = []
        previous = in_channels
        for width in channels:
            blocks.append(
                Convolution(
                    spatial_dims=2,
                    in_channels=previous,
                    out_channels=width,
                    strides=2,
                    kernel_size=3,
                    norm=None,
                    act=("LEAKYRELU", {"negative_slope": 0.2}),
                )
            )
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.fc_mu = nn.Linear(2 * previous, z_dim)
        self.fc_logvar = nn.Linear(2 * previous, z_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.blocks(images)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.std(dim=(2, 3))], dim=1)
        return self.fc_mu(pooled), self.fc_logvar(pooled)
