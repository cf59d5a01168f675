"""Per-volume overlap metrics of 2D predictions stacked back into volumes.

Undefined values are NaN, never a made-up 0 or 1: Dice when neither the prediction nor the
ground truth has the class, precision when nothing was predicted, recall when the class is
absent from the ground truth. Summaries and tests skip NaNs.

The scores are MONAI's confusion-matrix metrics (Dice is the F1 score). MONAI's DiceMetric is
not used: it scores an empty ground truth NaN (ignore_empty) or 1/0, not "NaN only when both
are empty", which the F1 score gives as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix


def confusion(prediction: np.ndarray, truth: np.ndarray, label: int) -> torch.Tensor:
    """MONAI's (tp, fp, tn, fn) of one label id, pooled over a whole volume.

    MONAI counts per batch item in float32; counting per slice (first axis) and summing in
    float64 keeps the counts exact for any volume size.
    """
    rows = prediction.shape[0] if prediction.ndim > 1 else 1
    predicted = torch.from_numpy(np.asarray(prediction == label, dtype=np.float32)).reshape(rows, 1, -1)
    true = torch.from_numpy(np.asarray(truth == label, dtype=np.float32)).reshape(rows, 1, -1)
    return get_confusion_matrix(predicted, true).double().sum(dim=0)


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice overlap of one label id between two label arrays of the same shape (MONAI's F1 score)."""
    return float(compute_confusion_matrix_metric("f1 score", confusion(prediction, truth, label)))


def precision(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of predicted voxels of the label that are truly that label."""
    return float(compute_confusion_matrix_metric("precision", confusion(prediction, truth, label)))


def recall(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of true voxels of the label that were predicted as that label (sensitivity)."""
    return float(compute_confusion_matrix_metric("sensitivity", confusion(prediction, truth, label)))


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
        counts = confusion(prediction, truth, label)
        row: dict[str, float | str] = {"class": name, "dice": float(compute_confusion_matrix_metric("f1 score", counts))}
        if lesion_metrics:
            row["precision"] = float(compute_confusion_matrix_metric("precision", counts))
            row["recall"] = float(compute_confusion_matrix_metric("sensitivity", counts))
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
