"""Perceptual term of the label VAE, applied to each PV channel as a grey image (as the authors' code does).

Offline default `random_conv`: LPIPS-style distances on the features of a *frozen, randomly
initialised* convolutional network drawn from a fixed seed. Zhang et al. 2018 (LPIPS) found
that untrained networks already give a useful perceptual distance; here it needs no download
and is the same in every run. Any other name is a MONAI `PerceptualLoss` network
(`alex`, `vgg`, `squeeze`: LPIPS as in the paper; `radimagenet_resnet50`, ...), usable where
its pretrained weights are cached.
"""

from __future__ import annotations

import torch
from torch import nn

from brainspade.errors import BrainspadeError


class RandomFeaturePerceptualLoss(nn.Module):
    """Mean squared distance of unit-normalised features of a frozen random conv net, per channel.

    Args:
        widths: output channels of the conv blocks (each halves the resolution after the first).
        seed: seed of the random weights (fixed, so the loss is the same function in every run).
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        blocks, previous = [], 1
        for index, width in enumerate(widths):
            conv = nn.Conv2d(previous, width, 3, padding=1, stride=1 if index == 0 else 2)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (9 * previous)) ** 0.5)
                conv.bias.zero_()
            blocks.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.requires_grad_(False)

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake = generated.reshape(-1, 1, *generated.shape[-2:])
        target = real.reshape(-1, 1, *real.shape[-2:])
        loss = generated.new_zeros(())
        for block in self.blocks:
            fake, target = block(fake), block(target)
            loss = loss + (_unit(fake) - _unit(target)).pow(2).sum(dim=1).mean()
        return loss


class MonaiPerceptualLoss(nn.Module):
    """MONAI `PerceptualLoss` applied per PV channel (each channel repeated to the 3 channels LPIPS expects)."""

    def __init__(self, network: str):
        super().__init__()
        from monai.losses import PerceptualLoss

        try:
            self.loss = PerceptualLoss(spatial_dims=2, network_type=network)
        except Exception as error:  # offline download refused, unknown name, missing cache: all user-fixable
            raise BrainspadeError(
                f"label_vae.perceptual_network={network}: MONAI could not load its weights ({type(error).__name__}); "
                "use label_vae.perceptual_network=random_conv offline"
            ) from error
        self.loss.eval().requires_grad_(False)

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake = generated.reshape(-1, 1, *generated.shape[-2:]).expand(-1, 3, -1, -1)
        target = real.reshape(-1, 1, *real.shape[-2:]).expand(-1, 3, -1, -1)
        return self.loss(fake, target)


def make_label_perceptual_loss(network: str) -> nn.Module:
    """'random_conv' (offline default) or a MONAI `PerceptualLoss` network name."""
    if network == "random_conv":
        return RandomFeaturePerceptualLoss()
    return MonaiPerceptualLoss(network)


def _unit(features: torch.Tensor) -> torch.Tensor:
    # LPIPS's x / (|x| + eps), with the squared norm clamped instead: the slope of sqrt at 0 is
    # infinite, and a squared feature norm underflows to 0 wherever a confident decoder gives a
    # channel ~1e-23 or less over a 3 x 3 patch (a 6,000-step cpu-profile label VAE's gradients
    # turned NaN at ~4,300 that way). Same values to within eps, and as fast (F.normalize: 2x slower).
    return features / features.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-20).sqrt()
