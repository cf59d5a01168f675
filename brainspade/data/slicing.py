"""Axial slices of a volume: brain selection, centred crop/pad and per-slice z-scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def crop_or_pad(plane: np.ndarray, size: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Centre-crop or pad the first two axes of `plane` to `size` (extra axes are kept)."""
    out = plane
    for axis, target in enumerate(size):
        current = out.shape[axis]
        if current > target:
            start = (current - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif current < target:
            before = (target - current) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, target - current - before)
            out = np.pad(out, widths, constant_values=fill)
    return out


def brain_slice_indices(brain: np.ndarray, min_fraction: float, every: int) -> np.ndarray:
    """Axial indices (last axis) whose brain share of pixels is at least `min_fraction`, every n-th."""
    fraction = brain.reshape(-1, brain.shape[2]).mean(axis=0)
    kept = np.flatnonzero(fraction >= min_fraction)
    return kept[::every]


def zscore_in_brain(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Z-score a slice with the mean and sd of its brain pixels, so contrast is comparable across sites."""
    values = image[brain]
    if values.size < 2:
        values = image.ravel()
    mean, std = float(values.mean()), float(values.std())
    return (image - mean) / max(std, 1e-6)


def background_channel(channels: Sequence[str]) -> int:
    """Index of the background channel ('background' if named, else the first channel)."""
    return list(channels).index("background") if "background" in channels else 0
