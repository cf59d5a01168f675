""""Native" scans made from phantom subjects: a known affine away from MNI space, on another grid.

A lab's scan is not in MNI space: its head sits rotated, shifted and scaled in a field of view
of its own, with its own voxel size and axis order. These helpers move a phantom subject (made
on the template grid) there with a known transform, so a test can check that registration finds
it again, and write its labels the way FreeSurfer / SynthSeg / FSL FAST would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from brainspade.data.freesurfer import SYNTHSEG_POSTERIOR_CODES

PHANTOM_TISSUES = ("background", "csf", "gm", "wm")  # the first four phantom channels


@dataclass(frozen=True)
class NativeScan:
    image: np.ndarray  # (X, Y, Z) on the native grid
    pv: np.ndarray  # (X, Y, Z, 4) background, CSF, GM, WM on the native grid: the native ground truth
    affine: np.ndarray  # native voxel -> RAS
    template_to_native: np.ndarray  # 4x4 RAS: MNI point -> the same anatomical point in the native scan


def random_pose(rng: np.random.Generator, centre_ras: np.ndarray, max_rotation_deg: float = 12.0,
                max_translation_mm: float = 15.0, max_scale: float = 0.08) -> np.ndarray:
    """A random similarity-plus-scale transform about `centre_ras` (4x4, RAS)."""
    linear = Rotation.from_euler("xyz", rng.uniform(-max_rotation_deg, max_rotation_deg, 3), degrees=True).as_matrix()
    linear = linear @ np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre_ras - linear @ centre_ras + rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return matrix


def make_native(image: np.ndarray, pv: np.ndarray, template_affine: np.ndarray, pose: np.ndarray,
                voxel_mm: tuple[float, float, float], axes: tuple[int, int, int] = (1, 0, 2),
                flips: tuple[bool, bool, bool] = (True, False, True), margin_mm: float = 25.0) -> NativeScan:
    """Resample a template-grid subject into a native grid: axes permuted/flipped, other voxels, wider FOV."""
    # Native voxel axes: axis i of the array runs along RAS axis axes[i], flipped where asked.
    directions = np.zeros((3, 3))
    for i, (ras_axis, flip) in enumerate(zip(axes, flips, strict=True)):
        directions[ras_axis, i] = (-1.0 if flip else 1.0) * voxel_mm[i]
    brain = np.argwhere(pv[..., 0] < 0.5)
    corners = np.c_[brain, np.ones(len(brain))] @ template_affine.T @ pose.T
    low, high = corners[:, :3].min(axis=0) - margin_mm, corners[:, :3].max(axis=0) + margin_mm
    shape = tuple(int(np.ceil((high[a] - low[a]) / voxel_mm[i])) + 1 for i, a in enumerate(axes))
    affine = np.eye(4)
    affine[:3, :3] = directions
    start = np.where(np.asarray(flips)[np.argsort(axes)], high, low)  # flipped axes start at the high end
    affine[:3, 3] = start
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")).reshape(3, -1)
    to_template_voxel = np.linalg.inv(template_affine) @ np.linalg.inv(pose) @ affine
    coords = to_template_voxel[:3, :3] @ grid + to_template_voxel[:3, 3:4]
    native_image = map_coordinates(image, coords, order=1, cval=0.0).reshape(shape).astype(np.float32)
    channels = [map_coordinates(pv[..., c], coords, order=1, cval=float(c == 0)).reshape(shape)
                for c in range(len(PHANTOM_TISSUES))]
    native_pv = np.stack(channels, axis=-1).astype(np.float32)
    native_pv /= native_pv.sum(axis=-1, keepdims=True)
    return NativeScan(native_image, native_pv, affine, pose)


def freesurfer_codes(scan: NativeScan) -> np.ndarray:
    """The native labels as an aparc+aseg-like volume: hemisphere codes, ventricles, cortical parcels."""
    hard = np.argmax(scan.pv, axis=-1)
    shape = hard.shape
    voxels = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")).reshape(3, -1)
    ras = (scan.affine[:3, :3] @ voxels + scan.affine[:3, 3:4])
    mni_x = (np.linalg.inv(scan.template_to_native) @ np.r_[ras, np.ones((1, ras.shape[1]))])[0].reshape(shape)
    left = mni_x < 0
    codes = np.zeros(shape, dtype=np.int32)
    codes[hard == 1] = 24  # CSF
    codes[(hard == 1) & (np.abs(mni_x) < 20)] = np.where(left, 4, 43)[(hard == 1) & (np.abs(mni_x) < 20)]
    gm = hard == 2
    parcel = (np.arange(codes.size).reshape(shape) % 7) < 3  # some cortex as aparc parcels, the rest as aseg cortex
    codes[gm] = np.where(left, 3, 42)[gm]
    codes[gm & parcel] = np.where(left, 1028, 2028)[gm & parcel]
    codes[hard == 3] = np.where(left, 2, 41)[hard == 3]
    return codes


def synthseg_posteriors(scan: NativeScan) -> np.ndarray:
    """The native PV maps as SynthSeg --post channels (one per SynthSeg label, sorted), split by hemisphere."""
    channel = {code: i for i, code in enumerate(SYNTHSEG_POSTERIOR_CODES)}
    posteriors = np.zeros((*scan.pv.shape[:3], len(SYNTHSEG_POSTERIOR_CODES)), dtype=np.float32)
    half = scan.pv.shape[0] // 2
    posteriors[..., channel[0]] = scan.pv[..., 0]
    posteriors[..., channel[24]] = scan.pv[..., 1]
    for tissue, (left_code, right_code) in ((2, (3, 42)), (3, (2, 41))):
        posteriors[:half, ..., channel[left_code]] = scan.pv[:half, ..., tissue]
        posteriors[half:, ..., channel[right_code]] = scan.pv[half:, ..., tissue]
    return posteriors


def write_native_labels(scan: NativeScan, folder: Path, name: str) -> dict[str, str]:
    """Write the image and its labels in the three lab formats; return {format: labels path (relative)}."""
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(scan.image, scan.affine), str(folder / f"{name}_T1w.nii.gz"))
    nib.save(nib.MGHImage(freesurfer_codes(scan), scan.affine), str(folder / f"{name}_aparc+aseg.mgz"))
    nib.save(nib.Nifti1Image(synthseg_posteriors(scan), scan.affine), str(folder / f"{name}_posteriors.nii.gz"))
    for index in range(3):  # pve_0 CSF, pve_1 GM, pve_2 WM
        nib.save(nib.Nifti1Image(scan.pv[..., index + 1], scan.affine), str(folder / f"{name}_pve_{index}.nii.gz"))
    return {"freesurfer": f"{name}_aparc+aseg.mgz", "synthseg_posteriors": f"{name}_posteriors.nii.gz",
            "fast": f"{name}_pve_0.nii.gz"}


def template_subject(resolution_mm: int, site: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom subject with the template's own anatomy (image, PV maps (X, Y, Z, 4), affine) in MNI space.

    The template anatomy (no subject warp) makes the MNI-space truth exact: a perfect registration
    gives back these very PV maps, so what a test measures is registration and resampling alone.
    """
    from brainspade.data.phantom import PHANTOM_CHANNELS, SITE_SPECS, load_templates, render_images

    templates = load_templates(resolution_mm)
    pv = np.moveaxis(templates.healthy_pv, 0, -1)
    lesion_free = np.concatenate([pv, np.zeros((*pv.shape[:3], len(PHANTOM_CHANNELS) - 4), np.float32)], axis=-1)
    spec = SITE_SPECS[site]
    image = render_images(np.random.default_rng(seed), spec, lesion_free, templates.t1, templates.voxel_size_mm)
    return image[spec.modalities[0]], pv, templates.affine


def native_from_template(resolution_mm: int, site: str, seed: int,
                         voxel_factors: tuple[float, float, float] = (0.6, 0.75, 0.9), head: bool = False) -> NativeScan:
    """A template-anatomy subject moved by a random known pose onto a finer, reoriented, wider native grid."""
    image, pv, affine = template_subject(resolution_mm, site, seed)
    if head:
        image, pv, affine = with_head(image, pv, affine, resolution_mm)
    rng = np.random.default_rng(1000 + seed)
    centre = (affine @ np.r_[(np.array(pv.shape[:3]) - 1) / 2, 1])[:3]
    voxel = tuple(resolution_mm * f for f in voxel_factors)
    return make_native(image, pv, affine, random_pose(rng, centre), voxel)


def transform_error_mm(found: np.ndarray, known: np.ndarray, brain_voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance (mm) between where two template->native transforms send each template brain voxel."""
    points = np.c_[brain_voxels, np.ones(len(brain_voxels))] @ affine.T
    return np.linalg.norm((points @ found.T - points @ known.T)[:, :3], axis=1)


def soft_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two fraction maps (2 sum min / sum + sum): 1 when the PV maps agree exactly."""
    return float(2 * np.minimum(a, b).sum() / max(a.sum() + b.sum(), 1e-9))


def with_head(image: np.ndarray, pv: np.ndarray, affine: np.ndarray, resolution_mm: int,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The brain-only phantom inside a crude head: a dark skull shell, then bright scalp (as on a T1), on a wider grid."""
    from scipy.ndimage import distance_transform_edt

    pad = int(20 / resolution_mm)
    image = np.pad(image, pad)
    pv = np.pad(pv, ((pad, pad),) * 3 + ((0, 0),))
    pv[..., 0][pv.sum(axis=-1) == 0] = 1.0
    affine = affine.copy()
    affine[:3, 3] -= pad * resolution_mm * np.sign(np.diag(affine)[:3])
    outside_mm = distance_transform_edt(pv[..., 0] > 0.5) * resolution_mm
    head = image + 0.15 * ((outside_mm > 1) & (outside_mm < 5)) + 0.8 * ((outside_mm >= 5) & (outside_mm < 11))
    return head.astype(np.float32), pv, affine
