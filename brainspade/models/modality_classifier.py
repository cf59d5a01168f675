"""The modality / data-set classifier D_mod,dat of brainSPADE (Fernandez et al. 2022, modification 1a)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn


class ModalityDatasetClassifier(nn.Module):
    """A MONAI DenseNet trunk with two linear heads: modality and data set of a 2D slice.

    With the default arguments the trunk is DenseNet-121 (Huang et al. 2017), as in the paper.
    The classifier is pretrained on real slices and then frozen: its logits drive the
    modality/data-set loss of the image generator and its block features the perceptual loss.

    Args:
        n_modalities: number of modality classes.
        n_datasets: number of data-set classes (the source data sets only).
        in_channels: image channels.
        init_features: channels of the first convolution (DenseNet-121: 64).
        growth_rate: channels each dense layer adds (DenseNet-121: 32).
        block_config: dense layers per block (DenseNet-121: 6, 12, 24, 16).
        dropout: dropout probability inside dense layers.
    """

    def __init__(
        self,
        n_modalities: int,
        n_datasets: int,
        in_channels: int = 1,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        dropout: float = 0.0,
    ):
        super().__init__()
        densenet = DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            dropout_prob=dropout,
        )
        self.trunk = densenet.features
        width = densenet.class_layers.out.in_features
        self.modality_head = nn.Linear(width, n_modalities)
        self.dataset_head = nn.Linear(width, n_datasets)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(modality logits, data-set logits, the output of every dense block) for images (B, 1, H, W)."""
        features = []
        x = images
        for name, layer in self.trunk.named_children():
            x = layer(x)
            if name.startswith("denseblock"):
                features.append(x)
        pooled = torch.relu(x).mean(dim=(2, 3))
        return self.modality_head(pooled), self.dataset_head(pooled), features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        modality_logits, dataset_logits, _ = self.forward_with_features(images)
        return modality_logits, dataset_logits
