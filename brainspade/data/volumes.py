"""Checking one (image, labels) pair and turning its labels into PV maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainspade.data.nifti import load_canonical
from brainspade.errors import BrainspadeError


def load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D image volume (a trailing singleton 4th axis is dropped) with finite values."""
    data, affine = load_canonical(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BrainspadeError(f"{path}: image has shape {data.shape}; expected a 3D volume")
    if not np.isfinite(data).all():
        raise BrainspadeError(f"{path}: image contains NaN or infinite values; fix or mask them before use")
    if float(data.min()) == float(data.max()):  # a blank export, or a failed conversion
        raise BrainspadeError(f"{path}: image is constant (every voxel {float(data.min()):g}); re-export it or drop its row")
    return data, affine


def load_pv_maps(
    path: Path,
    channels: Sequence[str],
    label_values: Mapping[str, int] | None,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as PV maps (X, Y, Z, C) float32 in [0, 1] summing to 1, plus the affine.

    Accepts a 4D PV map whose last axis has one channel per schema entry, or (when
    `label_values` maps channel names to integers) a 3D integer label volume, which
    becomes a one-hot PV map: hard labels are PV maps with no partial volume.
    """
    data, affine = load_canonical(path)
    if not np.isfinite(data).all():
        raise BrainspadeError(f"{path}: labels contain NaN or infinite values; fix the label file")
    if label_values:
        return _one_hot(path, data, channels, label_values), affine
    if data.ndim != 4:
        raise BrainspadeError(
            f"{path}: labels have shape {data.shape}; expected 4D PV maps (X, Y, Z, {len(channels)}) "
            "or set data.label_values for an integer label volume"
        )
    if data.shape[3] != len(channels):
        raise BrainspadeError(
            f"{path}: labels have {data.shape[3]} channels but data.channels names {len(channels)} "
            f"({', '.join(channels)}); make them agree"
        )
    low, high = float(data.min()), float(data.max())
    if low < -tolerance or high > 1 + tolerance:
        raise BrainspadeError(f"{path}: PV values span [{low:.3g}, {high:.3g}]; PV maps must lie in [0, 1]")
    sums = data.sum(axis=3)
    worst = float(np.abs(sums - 1).max())
    if worst > tolerance:
        raise BrainspadeError(
            f"{path}: PV channels sum to values up to {worst:.3g} away from 1 (tolerance {tolerance:g}); "
            "renormalise the maps or include the background channel"
        )
    data = np.clip(data, 0, 1)
    return data / data.sum(axis=3, keepdims=True), affine


def _one_hot(path: Path, data: np.ndarray, channels: Sequence[str], label_values: Mapping[str, int]) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BrainspadeError(f"{path}: integer labels have shape {data.shape}; expected a 3D volume")
    unknown_channels = [c for c in label_values if c not in channels]
    if unknown_channels or len(label_values) != len(channels):
        raise BrainspadeError(
            f"{path}: data.label_values must give one integer for each of data.channels ({', '.join(channels)})"
        )
    if not np.allclose(data, np.round(data)):
        raise BrainspadeError(f"{path}: label volume is not integer-valued; give 4D PV maps or integer labels")
    labels = np.round(data).astype(np.int64)
    known = np.array(sorted(label_values.values()))
    stray = np.setdiff1d(np.unique(labels), known)
    if stray.size:
        raise BrainspadeError(
            f"{path}: label values {stray[:5].tolist()} are not in data.label_values; map every value to a channel"
        )
    one_hot = np.zeros(labels.shape + (len(channels),), dtype=np.float32)
    for index, name in enumerate(channels):
        one_hot[..., index] = labels == label_values[name]
    return one_hot


def check_same_grid(image_path: Path, labels_path: Path, image_shape, labels_shape, image_affine, labels_affine) -> None:
    if tuple(image_shape) != tuple(labels_shape):
        raise BrainspadeError(
            f"{labels_path}: label grid {tuple(labels_shape)} differs from image {image_path.name} grid "
            f"{tuple(image_shape)}; resample the labels onto the image"
        )
    if not np.allclose(image_affine, labels_affine, atol=1e-3):
        raise BrainspadeError(
            f"{labels_path}: affine differs from image {image_path.name}; resample the labels onto the image"
        )
