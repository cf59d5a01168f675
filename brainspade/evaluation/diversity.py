"""Diversity: MS-SSIM between random pairs of slices of one set, and intensity distributions per tissue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric
from scipy.stats import wasserstein_distance

from brainspade.data.slicing import background_channel

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def ms_ssim_weights(size: Sequence[int], kernel: int) -> tuple[float, ...]:
    """The first k of MS-SSIM's five scale weights (renormalised), k as large as the slice size allows.

    MONAI needs min(size) // (k - 1)² > kernel - 1; 48 x 64 slices with a 7-pixel window take 3 scales,
    192 x 256 slices all 5.
    """
    for scales in range(len(MS_SSIM_WEIGHTS), 1, -1):
        if min(size) // (scales - 1) ** 2 > kernel - 1:
            weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
            return tuple(float(w) for w in weights / weights.sum())
    raise ValueError(f"slices of {tuple(size)} are too small for MS-SSIM with a {kernel}-pixel window")


def mean_pairwise_ms_ssim(images: np.ndarray, pairs: int, kernel: int, seed: int) -> tuple[float, float]:
    """Mean and sd of MS-SSIM over `pairs` random pairs of distinct slices (N, H, W); lower = more diverse.

    Each slice is scaled to [0, 1] by its own range first (slices are z-scored, so unbounded), as
    MS-SSIM-based diversity scores do for generated images.
    """
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), pairs)
    second = (first + rng.integers(1, len(images), pairs)) % len(images)  # never the slice itself
    stack = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    low = stack.amin(dim=(1, 2, 3), keepdim=True)
    stack = (stack - low) / (stack.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel,
                                  weights=ms_ssim_weights(images.shape[1:], kernel), reduction="none")
    values = metric(stack[torch.from_numpy(first)], stack[torch.from_numpy(second)]).view(-1).numpy()
    return float(values.mean()), float(values.std())


def tissue_intensities(images: np.ndarray, labels: np.ndarray, channels: Sequence[str]) -> dict[str, np.ndarray]:
    """Per tissue (argmax label, background left out), the z-scored intensities of its pixels over all slices."""
    background = background_channel(channels)
    return {name: images[labels == index].astype(np.float32) for index, name in enumerate(channels)
            if index != background and (labels == index).any()}


def intensity_distances(synthetic: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, float]:
    """1-D Wasserstein distance per tissue between synthetic and real intensities (tissues present in both)."""
    return {name: float(wasserstein_distance(synthetic[name], real[name])) for name in synthetic if name in real}
