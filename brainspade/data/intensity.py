"""Tissue-intensity model and scanner effects for the phantom images.

An image is rendered from a partial-volume (PV) map as a mixture of per-tissue mean
intensities with a faint smooth texture, then passed through a scanner model: point-spread
blur (optionally anisotropic, i.e. thick slices), a smooth multiplicative bias field, a global
intensity scale and Rician noise (magnitude of complex Gaussian noise, so the background sits
near 0 but is never exactly 0).

The three steps a fitted site model shares with the phantom (`mix_tissues`, `apply_bias`,
`rician_magnitude`) work on arrays of any shape: the phantom renders 3D volumes, the site model
(generation/site_look/scanner_model.py) stacks of 2D slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from brainspade.data.random_fields import smooth_random_field

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# Mean intensities in [0, 1] per tissue. T1: WM > GM > CSF, tumour hypointense, edema slightly
# darker than the WM it invades. FLAIR: CSF suppressed, GM brighter than WM, lesions bright.
T1_CONTRAST: Mapping[str, float] = {
    "background": 0.0, "csf": 0.20, "gm": 0.58, "wm": 0.86, "tumour": 0.32, "edema": 0.64,
}
# siteB's "other scanner" T1: flatter GM/WM contrast (GM/WM 0.81 instead of 0.67), brighter CSF.
T1_OTHER_SCANNER_CONTRAST: Mapping[str, float] = {
    "background": 0.0, "csf": 0.28, "gm": 0.66, "wm": 0.82, "tumour": 0.38, "edema": 0.66,
}
FLAIR_CONTRAST: Mapping[str, float] = {
    "background": 0.0, "csf": 0.08, "gm": 0.66, "wm": 0.46, "tumour": 0.82, "edema": 0.95,
}


@dataclass(frozen=True)
class ScannerProfile:
    """How one site's scanner degrades an ideal image.

    Attributes:
        blur_fwhm_mm: point-spread FWHM per axis (x, y, z); a large z value mimics thick slices.
        bias_log_std: standard deviation of the log of the multiplicative bias field.
        bias_correlation_mm: spatial scale of the bias field.
        noise_std: standard deviation of each complex noise component, relative to intensity 1.
        intensity_scale: global scale of the scanner's arbitrary units.
        intensity_scale_jitter: relative per-subject variation of that scale.
    """

    blur_fwhm_mm: tuple[float, float, float]
    bias_log_std: float
    bias_correlation_mm: float
    noise_std: float
    intensity_scale: float
    intensity_scale_jitter: float = 0.05


def jittered_means(
    rng: np.random.Generator, contrast: Mapping[str, float], relative_std: float
) -> dict[str, float]:
    """Per-subject tissue means: the site contrast times a small bounded random factor."""
    factors = np.clip(rng.normal(1.0, relative_std, size=len(contrast)), 1.0 - 2.5 * relative_std,
                      1.0 + 2.5 * relative_std)
    return {tissue: mean * float(factor) for (tissue, mean), factor in zip(contrast.items(), factors, strict=True)}


def mix_tissues(
    pv_maps: np.ndarray,
    levels: Sequence[float],
    textures: Sequence[np.ndarray | None],
    axis: int = -1,
) -> np.ndarray:
    """Per-tissue levels mixed by the PV fractions, each tissue times its multiplicative texture.

    Args:
        pv_maps: tissue fractions, the channels along ``axis``; any other shape.
        levels: intensity of each channel (a zero level adds nothing and is skipped).
        textures: per channel, a multiplicative field of the fractions' shape near 1, or None (flat).
        axis: the channel axis of ``pv_maps``.

    Returns:
        The ideal (noise-free) image, ``pv_maps``' shape without ``axis``, in its dtype.
    """
    fractions = np.moveaxis(pv_maps, axis, 0)
    image = np.zeros(fractions.shape[1:], dtype=pv_maps.dtype)
    for fraction, level, texture in zip(fractions, levels, textures, strict=True):
        level = pv_maps.dtype.type(level)
        if level == 0.0:
            continue
        contribution = level * fraction
        if texture is not None:
            contribution = contribution * texture
        image += contribution
    return image


def apply_bias(image: np.ndarray, log_sd: float, unit_field: np.ndarray) -> np.ndarray:
    """`image` times the smooth multiplicative bias field exp(log_sd * unit_field) (in the field's precision)."""
    return image * np.exp(unit_field.dtype.type(log_sd) * unit_field)


def rician_magnitude(image: np.ndarray, noise_sd: float, real_noise: np.ndarray,
                     imaginary_noise: np.ndarray) -> np.ndarray:
    """The magnitude of a complex signal with Gaussian noise of sd `noise_sd` on both channels, from unit-normal draws
    (in the draws' precision): Rician noise, so the background sits near 0 but is never exactly 0."""
    sd = real_noise.dtype.type(noise_sd)
    real = image + sd * real_noise
    imaginary = sd * imaginary_noise
    return np.sqrt(real * real + imaginary * imaginary)


def render_tissue_image(
    pv_maps: np.ndarray,
    channel_names: Sequence[str],
    tissue_means: Mapping[str, float],
    tissue_textures: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Mix per-tissue intensities by the PV map.

    Args:
        pv_maps: float32 array ``(X, Y, Z, C)`` of tissue fractions.
        channel_names: the tissue of each of the ``C`` channels.
        tissue_means: mean intensity per tissue name.
        tissue_textures: per tissue, a multiplicative texture field ``(X, Y, Z)`` near 1
            (tissues without an entry are flat).

    Returns:
        The ideal (noise-free) float32 image ``(X, Y, Z)``.
    """
    image = mix_tissues(pv_maps, [tissue_means[tissue] for tissue in channel_names],
                        [tissue_textures.get(tissue) for tissue in channel_names])
    return image.astype(np.float32, copy=False)


def tissue_textures(
    rng: np.random.Generator,
    tissues: Sequence[str],
    shape: tuple[int, int, int],
    voxel_size_mm: float,
    amplitude: float = 0.04,
    correlation_mm: float = 6.0,
) -> dict[str, np.ndarray]:
    """Faint smooth multiplicative texture per tissue (shared by all modalities of a subject)."""
    return {
        tissue: 1.0 + np.float32(amplitude) * smooth_random_field(rng, shape, voxel_size_mm, correlation_mm)
        for tissue in tissues
    }


def apply_scanner(
    rng: np.random.Generator, image: np.ndarray, profile: ScannerProfile, voxel_size_mm: float
) -> np.ndarray:
    """Blur, bias, scale and add Rician noise to an ideal image.

    Args:
        rng: the subject's generator.
        image: ideal float32 image ``(X, Y, Z)`` with intensities around [0, 1].
        profile: the site's scanner model.
        voxel_size_mm: isotropic voxel size of ``image``.

    Returns:
        The acquired float32 image, non-negative.
    """
    sigma_vox = [fwhm * FWHM_TO_SIGMA / voxel_size_mm for fwhm in profile.blur_fwhm_mm]
    if any(sigma > 0.0 for sigma in sigma_vox):
        image = gaussian_filter(image, sigma=sigma_vox, mode="nearest")
    log_bias = smooth_random_field(rng, image.shape, voxel_size_mm, profile.bias_correlation_mm)
    image = apply_bias(image, profile.bias_log_std, log_bias)
    real_noise = rng.standard_normal(image.shape, dtype=np.float32)
    imaginary_noise = rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = rician_magnitude(image, profile.noise_std, real_noise, imaginary_noise)
    scale = profile.intensity_scale * (1.0 + profile.intensity_scale_jitter * rng.uniform(-1.0, 1.0))
    return (np.float32(scale) * magnitude).astype(np.float32)
