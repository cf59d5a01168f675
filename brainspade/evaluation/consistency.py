"""Label-image consistency: a segmenter trained on real slices segments the synthetic images.

If an image shows the anatomy of the label map it was generated from, a segmenter trained on real
slices finds that label map again: Dice against the generating labels measures the agreement
(the same segmenter on real held-out slices is the reference it can reach).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.networks.utils import one_hot

from brainspade.generation.fidelity import label_dice

Segment = Callable[[np.ndarray], np.ndarray]  # image (H, W) -> label ids (H, W)


def segment_all(segment: Segment, images: np.ndarray) -> np.ndarray:
    """Label ids (N, H, W) of every image (N, H, W)."""
    return np.stack([np.asarray(segment(image)) for image in images])


def consistency_dice(predicted: np.ndarray, labels: np.ndarray, channels: Sequence[str]) -> dict[str, float | None]:
    """Dice per channel of predicted vs generating label ids (N, H, W), pooled over slices (None: absent in both)."""
    def as_one_hot(ids: np.ndarray) -> torch.Tensor:
        return one_hot(torch.from_numpy(ids.astype(np.int64))[:, None], len(channels), dim=1)

    return label_dice(as_one_hot(predicted), as_one_hot(labels), channels)


def mean_dice(scores: dict[str, float | None], classes: Sequence[str]) -> float | None:
    """Mean Dice over the given classes that are scored."""
    values = [scores[c] for c in classes if scores.get(c) is not None]
    return float(np.mean(values)) if values else None
