"""Spatial transforms of the phantom: random affine, smooth warp, radial push, one resampling.

Every transform here is a *backward* map: it takes output (subject-space) voxel coordinates
to the voxel coordinates in the source (template) volume that are sampled there. Composing
backward maps is therefore just evaluating them one after the other, and the template is
resampled only once, at the end, by :func:`resample`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from brainspade.data.random_fields import smooth_random_field


def voxel_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel coordinates of every voxel, shape ``(3, *shape)``, float32."""
    return np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"))


def random_affine(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_size_mm: float,
    max_rotation_deg: float,
    max_scale: float,
    max_translation_mm: float,
) -> np.ndarray:
    """Draw a small random affine about the volume centre, as a 4x4 voxel-to-voxel backward map.

    Args:
        rng: the subject's generator.
        shape: spatial shape of the volume (defines the rotation centre).
        voxel_size_mm: isotropic voxel size, to express the translation in voxels.
        max_rotation_deg: bound on the rotation angle about each axis.
        max_scale: bound on the relative scale change per axis (0.05 = ±5%).
        max_translation_mm: bound on the translation along each axis.

    Returns:
        A float64 4x4 matrix in homogeneous voxel coordinates.
    """
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, size=3)
    scales = 1.0 + rng.uniform(-max_scale, max_scale, size=3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, size=3) / voxel_size_mm
    linear = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(scales)
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + translation
    return matrix


def apply_affine(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Apply a 4x4 voxel affine to coordinates of shape ``(3, ...)``; returns float32."""
    linear = matrix[:3, :3].astype(np.float32)
    offset = matrix[:3, 3].astype(np.float32)
    flat = coords.reshape(3, -1)
    return (linear @ flat + offset[:, None]).reshape(coords.shape).astype(np.float32)


def random_displacement(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_size_mm: float,
    amplitude_mm: float,
    correlation_mm: float,
) -> np.ndarray:
    """Smooth random displacement field in voxels, shape ``(3, *shape)``, float32.

    Args:
        rng: the subject's generator.
        shape: spatial shape of the volume.
        voxel_size_mm: isotropic voxel size.
        amplitude_mm: standard deviation of each displacement component.
        correlation_mm: spatial scale of the deformation (large = gentle, anatomical).
    """
    scale = amplitude_mm / voxel_size_mm
    return np.stack(
        [scale * smooth_random_field(rng, shape, voxel_size_mm, correlation_mm) for _ in range(3)]
    )


def sample_displacement(displacement: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Evaluate a displacement field (defined on the voxel grid) at arbitrary voxel coordinates."""
    return np.stack(
        [map_coordinates(component, coords, order=1, mode="nearest") for component in displacement]
    ).astype(np.float32)


def radial_push(coords: np.ndarray, centre: np.ndarray, width_vox: float, strength: float) -> np.ndarray:
    """Backward map of a mass that pushes tissue radially away from ``centre``.

    A point at distance ``r`` from the centre samples the source at distance
    ``r * (1 - strength * exp(-r² / (2 width²)))``: the region around the centre is inflated and
    the tissue around it is compressed outwards. For ``0 <= strength < 1`` the radial map is
    monotonic, so the warp never folds.

    Args:
        coords: voxel coordinates, shape ``(3, ...)``.
        centre: voxel coordinates of the mass centre, shape ``(3,)``.
        width_vox: radius (in voxels) over which the push acts.
        strength: in ``[0, 1)``; the fractional shrink of the source radius at the centre.

    Returns:
        The pushed-back coordinates, same shape as ``coords``, float32.
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"radial push strength must be in [0, 1), got {strength}")
    offset = coords - np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (coords.ndim - 1)))
    squared_radius = np.sum(offset * offset, axis=0)
    shrink = 1.0 - strength * np.exp(-squared_radius / (2.0 * width_vox**2))
    return (coords - offset * (1.0 - shrink)).astype(np.float32)


def resample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linearly resample a 3D volume at voxel coordinates ``coords`` (shape ``(3, *out_shape)``).

    Linear interpolation keeps partial-volume maps in [0, 1] and summing to 1, because every
    output value is a convex combination of input values.
    """
    return map_coordinates(volume, coords, order=1, mode="nearest").astype(np.float32)
