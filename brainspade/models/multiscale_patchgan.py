"""The multi-scale PatchGAN discriminator of the SPADE VAE-GAN, on (PV maps, image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn


class MultiScalePatchGAN(nn.Module):
    """`num_scales` PatchGANs, the k-th seeing its input average-pooled by 2**k (pix2pixHD, Wang et al. 2018).

    MONAI's `MultiScalePatchDiscriminator` deepens each discriminator instead of downscaling
    the input, which needs >= 512-pixel slices for 3 scales of 3 layers; this is the pix2pixHD
    / SPADE arrangement that the paper's "3 scales, 3 layers" refers to. Instance norm (not
    batch norm) keeps each sample's score independent of its batch.

    Args:
        in_channels: PV map channels + image channels.
        num_scales: number of discriminators (paper: 3).
        num_layers: stride-2 layers of each discriminator (paper: 3).
        channels: width of the first layer (doubled per layer).
    """

    def __init__(self, in_channels: int, num_scales: int = 3, num_layers: int = 3, channels: int = 64):
        super().__init__()
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(
                spatial_dims=2,
                channels=channels,
                in_channels=in_channels,
                num_layers_d=num_layers,
                norm="INSTANCE",
                last_conv_kernel_size=3,
            )
            for _ in range(num_scales)
        )

    def forward(self, inputs: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Per scale: the patch scores and the intermediate features (for feature matching)."""
        scores, features = [], []
        x = inputs
        for k, discriminator in enumerate(self.discriminators):
            if k > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs = discriminator(x)
            scores.append(outputs[-1])
            features.append(outputs[:-1])
        return scores, features
