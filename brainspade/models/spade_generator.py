"""The SPADE generator of brainSPADE: a style code and PV maps -> an MR slice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.spade_network import SPADENetResBlock
from torch import nn


class SpadeGenerator(nn.Module):
    """A linear map of the style code to a coarse tensor, then SPADE res-blocks up to full size.

    Park et al. 2019 (SPADE) as used by Fernandez et al. 2022: every scale, the full-size one
    included, normalises its activations (instance norm) and re-modulates them with the PV maps.
    The maps are area-averaged to each scale, so a coarse scale still sees partial volumes
    rather than a nearest-neighbour pick. Upsampling is nearest; the output is unbounded
    (slices are z-scored). MONAI's `SPADENetResBlock` is the block.

    Args:
        label_channels: PV map channels.
        z_dim: style code size.
        size: output (H, W); each must be divisible by 2 ** (len(channels) - 1).
        channels: block widths from the coarsest scale to the full-size one.
        spade_hidden: hidden channels of each SPADE modulation network.
        out_channels: image channels.
        style_at_every_scale: also feed the style code (broadcast over the slice) to every SPADE
            modulation network next to the PV maps. The paper's generator sees the code only
            through the coarse tensor, which instance norm mostly normalises away early in
            training; with the code in the modulation, each tissue's contrast is directly a
            function of (tissue, style), which short (CPU) trainings learn.
    """

    def __init__(
        self,
        label_channels: int,
        z_dim: int,
        size: Sequence[int],
        channels: Sequence[int],
        spade_hidden: int = 128,
        out_channels: int = 1,
        style_at_every_scale: bool = False,
        noise_input: bool = False,
    ):
        super().__init__()
        self.style_at_every_scale = style_at_every_scale
        modulation_channels = label_channels + (z_dim if style_at_every_scale else 0)
        factor = 2 ** (len(channels) - 1)
        if any(s % factor for s in size):
            raise ValueError(f"size {list(size)} must be divisible by {factor} for {len(channels)} generator scales")
        self.coarse_shape = (channels[0], size[0] // factor, size[1] // factor)
        self.fc = nn.Linear(z_dim, channels[0] * self.coarse_shape[1] * self.coarse_shape[2])
        widths = [*channels, channels[-1]]
        self.blocks = nn.ModuleList(
            SPADENetResBlock(
                spatial_dims=2,
                in_channels=widths[i],
                out_channels=widths[i + 1],
                label_nc=modulation_channels,
                spade_intermediate_channels=spade_hidden,
            )
            for i in range(len(channels))
        )
        self.noise_scale = None
        if noise_input:
            # Starts at zero: the generator adds noise only as far as its losses ask for it.
            self.noise_scale = nn.Linear(z_dim, widths[-2])
            nn.init.zeros_(self.noise_scale.weight)
            nn.init.zeros_(self.noise_scale.bias)
        self.out = Convolution(
            spatial_dims=2, in_channels=channels[-1], out_channels=out_channels, kernel_size=3, conv_only=True
        )

    def forward(self, pv_maps: torch.Tensor, style_code: torch.Tensor, noise: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`noise` (B,1,H,W), used only with `noise_input`; None there means no noise (a mean image)."""
        x = self.fc(style_code).view(-1, *self.coarse_shape)
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            if self.noise_scale is not None and noise is not None and i == len(self.blocks) - 1:
                x = x + self.noise_scale(style_code)[:, :, None, None] * noise.to(x)
            modulation = F.adaptive_avg_pool2d(pv_maps, x.shape[-2:])
            if self.style_at_every_scale:
                code = style_code[:, :, None, None].expand(-1, -1, *x.shape[-2:])
                modulation = torch.cat([modulation, code], dim=1)
            x = block(x, modulation)
        return self.out(F.leaky_relu(x, 0.2))
