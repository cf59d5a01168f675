"""Per-volume overlap metrics of 2D predictions stacked back into volumes.

Undefined values are NaN, never a made-up 0 or 1: Dice when neither the prediction nor the
ground truth has the class, precision when nothing was predicted, recall when the class is
absent from the ground truth. Summaries and tests skip NaNs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice overlap of one label id between two label arrays of the same shape."""
    predicted, true = prediction == label, truth == label
    total = int(predicted.sum()) + int(true.sum())
    return float("nan") if total == 0 else 2.0 * int((predicted & true).sum()) / total


def precision(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of predicted voxels of the label that are truly that label."""
    predicted = prediction == label
    count = int(predicted.sum())
    return float("nan") if count == 0 else int((predicted & (truth == label)).sum()) / count


def recall(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of true voxels of the label that were predicted as that label (sensitivity)."""
    true = truth == label
    count = int(true.sum())
    return float("nan") if count == 0 else int(((prediction == label) & true).sum()) / count


def stack_volumes(
    slices: Sequence[np.ndarray], subjects: Sequence[str], slice_indices: Sequence[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group 2D slices by subject into (S, H, W) volumes ordered by slice index.

    Returns {subject: (volume, sorted slice indices)}, subjects in sorted order. Two slices of
    one subject with the same index are an error (a volume cannot hold both).
    """
    if not len(slices) == len(subjects) == len(slice_indices):
        raise ValueError("slices, subjects and slice indices must have the same length")
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    subjects = np.asarray(subjects).astype(str)
    slice_indices = np.asarray(slice_indices, dtype=np.int64)
    for subject in sorted(set(subjects.tolist())):
        members = np.flatnonzero(subjects == subject)
        order = members[np.argsort(slice_indices[members], kind="stable")]
        indices = slice_indices[order]
        if len(np.unique(indices)) != len(indices):
            raise ValueError(f"subject {subject}: the same slice index appears twice")
        volumes[subject] = (np.stack([np.asarray(slices[i]) for i in order]), indices)
    return volumes


def volume_metrics(
    prediction: np.ndarray, truth: np.ndarray, classes: dict[str, int], lesion_metrics: bool
) -> list[dict[str, float | str]]:
    """One row per class: {'class', 'dice'} plus 'precision' and 'recall' when lesion_metrics."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    rows = []
    for name, label in classes.items():
        row: dict[str, float | str] = {"class": name, "dice": dice(prediction, truth, label)}
        if lesion_metrics:
            row["precision"] = precision(prediction, truth, label)
            row["recall"] = recall(prediction, truth, label)
        rows.append(row)
    return rows


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the non-NaN values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), sd, int(finite.size)
