"""Brain masks that no label map decides: the template's on its grid, else the image's own intensities.

A target site's images (labelled or not) and every unlabelled image are z-scored and sliced inside
these masks, so a lab's label-free scans and the phantom's target scans are read by one rule
(METHOD.md, "Unlabelled means unlabelled").
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes, gaussian_filter, label

from brainspade.data.registration import Template

SMOOTHING_MM = 1.0  # Gaussian sigma before thresholding: noise must not cut the brain into pieces
THRESHOLD_SHARE = 0.1  # how far from the 1st to the 99th intensity percentile the brain starts


def on_grid(shape: tuple[int, ...], affine: np.ndarray, template: Template) -> bool:
    """True when a volume lies on the template's voxel grid (the phantom, or a scan registered to it)."""
    return tuple(shape) == tuple(template.grid.shape) and np.allclose(affine, template.grid.affine, atol=1e-3)


def intensity_brain_mask(image: np.ndarray, voxel_size_mm: np.ndarray) -> np.ndarray:
    """Bool (X, Y, Z): the smoothed image above 10% of the way from its 1st to its 99th percentile, largest
    component, holes filled in each axial plane (dark CSF inside the brain belongs to it)."""
    smoothed = gaussian_filter(np.asarray(image, dtype=np.float32), SMOOTHING_MM / np.asarray(voxel_size_mm))
    low, high = np.percentile(smoothed, (1, 99))
    components, count = label(smoothed > low + THRESHOLD_SHARE * (high - low))
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == sizes.argmax()
    return np.stack([binary_fill_holes(largest[:, :, z]) for z in range(largest.shape[2])], axis=2)


def image_brain_mask(image: np.ndarray, affine: np.ndarray, template: Template | None) -> np.ndarray:
    """The brain of an image read without labels: the template's mask when the image is on its grid, else
    `intensity_brain_mask`."""
    if template is not None and on_grid(image.shape, affine, template):
        return template.brain
    return intensity_brain_mask(image, np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
