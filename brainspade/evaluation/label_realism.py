"""Label realism: tissue volumes, lesion sizes, connected components and holes of label maps, real vs synthetic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance

from brainspade.training.label_batches import tissue_volumes, volume_distances


def lesion_sizes(labels: np.ndarray, channel: int) -> np.ndarray:
    """Share of the slice the lesion covers (argmax labels (N, H, W)), for the slices where it appears."""
    share = (labels == channel).reshape(len(labels), -1).mean(axis=1)
    return share[share > 0]


def components_and_holes(mask: np.ndarray) -> tuple[int, int]:
    """Connected components of a 2D mask and its holes (background components that do not touch the border).

    4-connectivity for the mask and 8 for the background, so that a diagonal gap is neither a
    second component nor a way out of a hole (the digital-topology pairing).
    """
    _, components = ndimage.label(mask)
    background, count = ndimage.label(~mask, structure=np.ones((3, 3)))
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return int(components), int(count - np.count_nonzero(border))


def topology(labels: np.ndarray, channels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per tissue: mean connected components and holes per slice, over the slices where the tissue appears."""
    result = {}
    for index, name in enumerate(channels):
        counts = [components_and_holes(slice_ == index) for slice_ in labels if (slice_ == index).any()]
        if counts:
            components, holes = np.asarray(counts, dtype=np.float64).mean(axis=0)
            result[name] = {"components": float(components), "holes": float(holes), "slices": len(counts)}
    return result


def label_statistics(pv_maps: np.ndarray, channels: Sequence[str], lesion_channels: Sequence[str]) -> dict:
    """Everything label realism compares, for one set of PV maps (N, C, H, W)."""
    labels = pv_maps.argmax(axis=1)
    return {
        "volumes": tissue_volumes(torch.from_numpy(np.asarray(pv_maps, dtype=np.float32))),
        "lesion_sizes": {name: lesion_sizes(labels, channels.index(name)) for name in lesion_channels},
        "topology": topology(labels, channels),
    }


def label_distances(synthetic: dict, real: dict, channels: Sequence[str]) -> dict:
    """Wasserstein distances between two `label_statistics`: tissue volumes per channel and lesion sizes."""
    lesions = {}
    for name, sizes in synthetic["lesion_sizes"].items():
        other = real["lesion_sizes"][name]
        lesions[name] = float(wasserstein_distance(sizes, other)) if len(sizes) and len(other) else None
    return {"volumes": volume_distances(synthetic["volumes"], real["volumes"], channels), "lesion_sizes": lesions}
