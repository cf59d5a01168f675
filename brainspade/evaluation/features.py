"""Feature networks for FID/KID that work offline: the project's own classifier trunk, or a user's TorchScript file.

FID and KID compare distributions of a network's features. Inception weights need a download and
know nothing of MRI; the modality / data-set classifier of `train-modisc` is trained on real slices
of this data (its pooled DenseNet features). A user with medical feature weights (e.g. RadImageNet)
saved as TorchScript can point `evaluation.feature_weights` at the file instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from brainspade.errors import BrainspadeError
from brainspade.models.modality_classifier import ModalityDatasetClassifier

FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]  # images (B, 1, H, W) -> features (B, D)


def classifier_features(network: ModalityDatasetClassifier) -> FeatureNetwork:
    """The classifier's pooled trunk features (the input of its two heads), as FID takes Inception's pool layer."""
    network = network.eval().requires_grad_(False)

    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.relu(network.trunk(images)).mean(dim=(2, 3))

    return features


def torchscript_features(path: str | Path, device: torch.device) -> FeatureNetwork:
    """A TorchScript module from `path` (images (B, 1, H, W) -> (B, D), or maps pooled to (B, D))."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BrainspadeError(f"evaluation.feature_weights={path}: no such file; give a TorchScript (.pt) file")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as error:
        raise BrainspadeError(f"evaluation.feature_weights={path}: not a TorchScript file ({error})") from None

    def features(images: torch.Tensor) -> torch.Tensor:
        output = module(images)
        return output.flatten(2).mean(dim=2) if output.dim() > 2 else output

    return features


@torch.no_grad()
def extract(network: FeatureNetwork, images: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    """Features (N, D) float64 of images (N, H, W) on the z-score scale."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))[:, None]
        chunks.append(network(batch.to(device)).double().cpu())
    return torch.cat(chunks)
