"""The label LDM's denoiser: MONAI `DiffusionModelUNet` conditioned on lesion proportions and slice position."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


class ConditionedDiffusionUNet(nn.Module):
    """ε-predicting UNet over label latents with classifier-free guidance support.

    Fernandez et al. 2024 (journal brainSPADE): the condition is the proportion of each lesion
    type plus the normalised slice position, entering through cross-attention; Ho & Salimans
    2022 (classifier-free guidance): a learned null embedding replaces dropped conditions.

    Args:
        latent_channels: channels of the VAE latent.
        num_lesions: lesion channels L; the condition vector has L + 1 entries.
        channels: UNet feature channels per level.
        attention_levels: levels with (cross-)attention; the bottleneck always has it.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: groups of the group norms.
        condition_dim: width of the condition embedding (the cross-attention context).
    """

    def __init__(
        self,
        latent_channels: int,
        num_lesions: int,
        channels: Sequence[int] = (128, 256, 256),
        attention_levels: Sequence[bool] = (False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        condition_dim: int = 64,
    ):
        super().__init__()
        self.num_lesions = num_lesions
        self.condition_embedding = nn.Sequential(
            nn.Linear(2 * num_lesions + 1, condition_dim), nn.SiLU(), nn.Linear(condition_dim, condition_dim)
        )
        self.null_condition = nn.Parameter(torch.zeros(condition_dim))
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=latent_channels,
            out_channels=latent_channels,
            channels=list(channels),
            attention_levels=list(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            with_conditioning=True,
            cross_attention_dim=condition_dim,
        )

    def embed(self, conditions: torch.Tensor, dropped: torch.Tensor | None = None) -> torch.Tensor:
        """Conditions (B, L+1) -> context (B, 1, condition_dim); rows where `dropped` get the null embedding."""
        proportions, position = conditions[:, : self.num_lesions], conditions[:, self.num_lesions :]
        # sqrt spreads the small proportions typical of lesions; the presence flag makes "none" unmistakable.
        features = torch.cat([proportions.clamp_min(0).sqrt(), (proportions > 0).float(), position], dim=1)
        context = self.condition_embedding(features)
        if dropped is not None:
            context = torch.where(dropped[:, None], self.null_condition.expand_as(context), context)
        return context[:, None, :]

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor, dropped: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted noise ε for noisy latents at `timesteps` (B,) given conditions (B, L+1)."""
        return self.unet(latents, timesteps, context=self.embed(conditions, dropped))
