"""Smooth random fields: the shared source of randomness for deformations, textures and bias.

A field is drawn as white noise on a coarse grid (one node per correlation length), lightly
smoothed there and then upsampled separably with linear interpolation. This is far cheaper
than Gaussian-filtering white noise at full resolution, and the result is smooth at the scale
that matters (millimetres to centimetres).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter


def linear_upsampling_matrix(n_out: int, n_coarse: int) -> np.ndarray:
    """Matrix that linearly interpolates ``n_coarse`` nodes onto ``n_out`` evenly spaced points.

    Args:
        n_out: number of output samples along the axis.
        n_coarse: number of coarse nodes (at least 2); both grids span the same extent.

    Returns:
        A float64 array of shape ``(n_out, n_coarse)`` whose rows sum to 1.
    """
    positions = np.linspace(0.0, n_coarse - 1.0, n_out)
    lower = np.minimum(np.floor(positions).astype(np.int64), n_coarse - 2)
    fraction = positions - lower
    weights = np.zeros((n_out, n_coarse))
    rows = np.arange(n_out)
    weights[rows, lower] = 1.0 - fraction
    weights[rows, lower + 1] = fraction
    return weights


def smooth_random_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_size_mm: float,
    correlation_mm: float,
) -> np.ndarray:
    """Draw a zero-mean, unit-variance random field that varies on the scale ``correlation_mm``.

    Args:
        rng: the generator that owns this subject's randomness.
        shape: spatial shape of the output volume.
        voxel_size_mm: isotropic voxel size of the output volume.
        correlation_mm: distance over which the field decorrelates.

    Returns:
        A float32 array of ``shape`` with mean ~0 and standard deviation ~1.
    """
    coarse_shape = tuple(max(2, math.ceil(n * voxel_size_mm / correlation_mm) + 1) for n in shape)
    coarse = gaussian_filter(rng.standard_normal(coarse_shape), sigma=0.7, mode="reflect")
    coarse = (coarse - coarse.mean()) / max(float(coarse.std()), 1e-8)
    weights = [linear_upsampling_matrix(n, m) for n, m in zip(shape, coarse_shape, strict=True)]
    field = np.einsum("ia,abc->ibc", weights[0], coarse)
    field = np.einsum("jb,ibc->ijc", weights[1], field)
    field = np.einsum("kc,ijc->ijk", weights[2], field)
    return field.astype(np.float32)
