"""siteN's acquisition: a target site drawn outside the phantom's own intensity model.

The other sites share one renderer (`data/intensity.py`: tissue levels mixed by the PV map, texture,
Gaussian blur, bias, Rician noise), so a site model fitted to that family fits all of them. siteN is
made another way, so that a claim about "a new scanner" is tested on one:

1. the real MNI T1 template texture, warped like the subject's labels, through a fixed monotone
   non-linear curve (a PCHIP spline through the configured knots): the tissue order of a T1 is
   kept, but intensities are no longer a linear mix of tissue levels;
2. MR artefact models from TorchIO: a polynomial bias field, thick axial slices
   (`RandomAnisotropy`), rigid head motion during the acquisition (`RandomMotion`), phase-encoding
   ghosts (`RandomGhosting`), k-space spikes (`RandomSpike`) and Gaussian noise on the complex
   signal before the magnitude is taken.
"""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from scipy.interpolate import PchipInterpolator

from brainspade.settings import OtherPhysicsSettings

# The phantom's volumes are in MNI voxel order (x, y, z): thick slices are along the third, inferior-superior, axis.
AXIAL_AXIS = 2
# The template intensity the curve's knots are relative to: a high brain percentile (white matter), not the
# maximum, so a few bright voxels do not move the curve.
REFERENCE_PERCENTILE = 99.0


def intensity_curve(t1: np.ndarray, brain_mask: np.ndarray, settings: OtherPhysicsSettings) -> np.ndarray:
    """The T1 through the monotone curve of `settings` (knots relative to its brain's 99th percentile), float32."""
    reference = float(np.percentile(t1[brain_mask], REFERENCE_PERCENTILE)) if brain_mask.any() else 1.0
    knots_in, knots_out = np.asarray(settings.curve_input), np.asarray(settings.curve_output)
    relative = np.clip(t1 / max(reference, 1e-6), knots_in[0], knots_in[-1])
    return PchipInterpolator(knots_in, knots_out)(relative).astype(np.float32)


def artefact_transform(settings: OtherPhysicsSettings, voxel_size_mm: float) -> tio.Compose:
    """TorchIO's MR artefacts in acquisition order: coil bias, slice thickness, motion, ghosts, spikes, noise."""
    downsampling = tuple(max(1.0, thickness / voxel_size_mm) for thickness in settings.slice_thickness_mm)
    return tio.Compose([
        tio.RandomBiasField(coefficients=settings.bias_field, order=settings.bias_order),
        tio.RandomAnisotropy(axes=(AXIAL_AXIS,), downsampling=downsampling),
        tio.RandomMotion(degrees=settings.motion_degrees, translation=settings.motion_translation_mm,
                         num_transforms=settings.motion_movements),
        tio.RandomGhosting(num_ghosts=tuple(settings.ghosts), axes=(settings.ghost_axis,),
                           intensity=tuple(settings.ghost_intensity)),
        tio.RandomSpike(num_spikes=tuple(settings.spikes), intensity=tuple(settings.spike_intensity)),
        tio.RandomNoise(std=tuple(settings.noise_std)),
    ])


def render_other_physics(
    warped_t1: np.ndarray,
    brain_mask: np.ndarray,
    settings: OtherPhysicsSettings,
    seed: int,
    voxel_size_mm: float,
) -> np.ndarray:
    """One siteN image from the subject's warped template T1.

    Args:
        warped_t1: float32 ``(X, Y, Z)`` real T1 template texture, warped like the subject's labels.
        brain_mask: bool ``(X, Y, Z)``, the subject's brain (the curve's knots are relative to it).
        settings: the site's curve and artefact ranges.
        seed: the subject's own seed; TorchIO draws from torch's global generator, which is seeded
            with it here and restored afterwards, so no other draw moves.
        voxel_size_mm: isotropic voxel size (motion and slice thickness are in mm).

    Returns:
        The float32 magnitude image ``(X, Y, Z)``, non-negative; the same arguments give the same bytes.
    """
    ideal = intensity_curve(warped_t1, brain_mask, settings)
    affine = np.diag([voxel_size_mm, voxel_size_mm, voxel_size_mm, 1.0])
    image = tio.ScalarImage(tensor=torch.from_numpy(ideal)[None], affine=affine)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        acquired = artefact_transform(settings, voxel_size_mm)(image).data[0].numpy()
    return np.abs(acquired).astype(np.float32)  # a magnitude image, as a scanner writes it
