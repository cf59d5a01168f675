"""Style-code consistency loss of brainSPADE (Fernandez et al. 2022, modification 1b)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.transforms import RandAffine
from monai.utils import convert_to_tensor
from torch import nn


class StyleConsistencyLoss(nn.Module):
    """1 - cos(E_s(i), E_s(T(i))) for a random affine T drawn anew for every sample (MONAI `RandAffine`).

    Optionally, codes of images of *different* modalities in the batch are pushed apart
    (mean relu(cos - margin) over such pairs), an addition METHOD.md allows: the positive term
    alone is also satisfied by a code that ignores the image.

    Args:
        rotate: largest rotation (radians).
        scale: largest relative zoom change.
        translate: largest shift, as a fraction of the slice size.
        negative_weight: weight of the negative term (0: positives only, as the authors' code).
        negative_margin: cosine similarity below which different-modality codes are not penalised.
    """

    def __init__(
        self,
        rotate: float = 0.26,
        scale: float = 0.1,
        translate: float = 0.05,
        negative_weight: float = 0.0,
        negative_margin: float = 0.0,
    ):
        super().__init__()
        self.rotate, self.scale, self.translate = rotate, scale, translate
        self.negative_weight, self.negative_margin = negative_weight, negative_margin

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """A new random affine copy of each image; the draws come from torch's RNG (checkpointed)."""
        height, width = images.shape[-2:]
        affine = RandAffine(
            prob=1.0,
            rotate_range=(self.rotate,),
            scale_range=(self.scale, self.scale),
            translate_range=(self.translate * height, self.translate * width),
            padding_mode="border",
        )
        affine.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        # An augmentation, not a network: fp32 even under bf16 autocast (MONAI converts its matrices to numpy).
        with torch.autocast(images.device.type, enabled=False):
            copies = [convert_to_tensor(affine(image.detach().float()), track_meta=False) for image in images]
        return torch.stack(copies).to(images)

    def forward(
        self, encoder: nn.Module, images: torch.Tensor, modalities: Sequence[int] | torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`codes`: `encoder`'s code of `images` where the caller already has it (the generator's own style code)."""
        if codes is None:
            codes, _ = encoder(images)
        transformed, _ = encoder(self.transform(images))
        loss = (1 - F.cosine_similarity(codes, transformed, dim=1)).mean()
        if self.negative_weight > 0 and modalities is not None:
            loss = loss + self.negative_weight * self.negative_term(codes, torch.as_tensor(modalities))
        return loss

    def negative_term(self, codes: torch.Tensor, modalities: torch.Tensor) -> torch.Tensor:
        modalities = modalities.to(codes.device)
        different = modalities[:, None] != modalities[None, :]
        if not bool(different.any()):
            return codes.new_zeros(())
        unit = F.normalize(codes, dim=1)
        similarity = unit @ unit.T
        return F.relu(similarity[different] - self.negative_margin).mean()
