"""Perceptual loss for the image generator: distances between deep features of generated and real slices.

Offline default: the block features of the frozen modality/data-set classifier (trained in
this workdir, so nothing is downloaded). MONAI's `PerceptualLoss` (LPIPS, RadImageNet, MedicalNet)
can be chosen instead where its pretrained weights are available.
"""

from __future__ import annotations

import torch
from torch import nn

from brainspade.errors import BrainspadeError


class ClassifierPerceptualLoss(nn.Module):
    """LPIPS-style distance on a frozen classifier's block features.

    Each block's features are unit-normalised across channels (as LPIPS does) so that no
    block dominates by scale; the squared differences are averaged per block and summed.

    Args:
        classifier: a frozen `ModalityDatasetClassifier` in eval mode.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, generated: torch.Tensor, real: torch.Tensor,
                generated_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`generated_features`: the classifier's block features of `generated`, where the caller already has them
        (the image generator's modality term runs the same forward pass)."""
        if generated_features is None:
            _, _, generated_features = self.classifier.forward_with_features(generated)
        with torch.no_grad():
            _, _, real_features = self.classifier.forward_with_features(real)
        loss = generated.new_zeros(())
        for fake, target in zip(generated_features, real_features, strict=True):
            loss = loss + (_unit(fake) - _unit(target)).pow(2).sum(dim=1).mean()
        return loss


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def make_perceptual_loss(network: str, classifier: nn.Module | None) -> nn.Module:
    """'classifier' -> `ClassifierPerceptualLoss`; any other name -> MONAI `PerceptualLoss(network_type=name)`."""
    if network == "classifier":
        if classifier is None:
            raise BrainspadeError("image_generator.perceptual_network=classifier needs the trained classifier (train-modisc)")
        return ClassifierPerceptualLoss(classifier)
    from monai.losses import PerceptualLoss

    try:
        loss = PerceptualLoss(spatial_dims=2, network_type=network)
    except Exception as error:  # download refused offline, unknown name, missing cache: all user-fixable
        raise BrainspadeError(
            f"image_generator.perceptual_network={network}: MONAI could not load its weights "
            f"({type(error).__name__}); use perceptual_network=classifier offline"
        ) from error
    return loss.eval().requires_grad_(False)
