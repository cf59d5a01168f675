"""KL-regularised autoencoder over partial-volume label maps (brainSPADE's label VAE, stage 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn


class LabelVAE(nn.Module):
    """MONAI `AutoencoderKL` whose decoder ends in a softmax over channels, so decoded maps are valid PV maps.

    Rombach et al. 2022 (latent diffusion), as used for labels by Fernandez et al. 2022: one
    downsampling per step between `channels` levels (2 for three levels), self-attention only
    at the bottleneck, a small latent.

    Args:
        num_channels: PV channels of the label schema (input and output channels).
        channels: feature channels per level; the paper uses (64, 128, 256) (base 64, x1, x2, x4).
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the latent (3 in the paper).
        norm_num_groups: groups of the group norms (must divide every entry of `channels`).
        bottleneck_attention: self-attention at the bottleneck of encoder and decoder.
    """

    def __init__(
        self,
        num_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 2,
        latent_channels: int = 3,
        norm_num_groups: int = 32,
        bottleneck_attention: bool = True,
    ):
        super().__init__()
        self.num_channels = num_channels
        self.latent_channels = latent_channels
        self.downsampling = 2 ** (len(channels) - 1)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2,
            in_channels=num_channels,
            out_channels=num_channels,
            channels=list(channels),
            num_res_blocks=num_res_blocks,
            attention_levels=[False] * len(channels),
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=bottleneck_attention,
            with_decoder_nonlocal_attn=bottleneck_attention,
        )

    def encode(self, pv_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PV maps (B, C, H, W) -> latent mean and standard deviation (B, latent_channels, H/4, W/4)."""
        return self.autoencoder.encode(pv_maps)

    def decode_logits(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> PV maps: channels in [0, 1] summing to 1 by construction (softmax)."""
        return torch.softmax(self.decode_logits(latents), dim=1)

    def forward(self, pv_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction *logits* from a reparameterised latent sample, with the latent mean and std (KL term).

        Logits rather than PV maps so a cross-entropy term can use a stable log-softmax;
        `softmax(logits, dim=1)` is the reconstructed PV map.
        """
        mu, sigma = self.encode(pv_maps)
        # Drawn in row-major order (randn_like would follow sigma's strides, channels-last from a batch of 2 on): a
        # sample's noise is then the same whether its batch is split into micro-batches or not.
        latents = mu + sigma * torch.randn(sigma.shape, dtype=sigma.dtype, device=sigma.device)
        return self.decode_logits(latents), mu, sigma
