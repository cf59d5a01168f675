"""Affine registration of a subject's scan to the MNI152 2009 template, and resampling either way.

The template is the one the phantom is built from (nilearn's offline MNI152 2009 T1, brain
mask and tissue maps) at the profile's resolution, so registered scans land on exactly the grid
the phantom's volumes have. The library is SimpleITK's registration framework: it is already
installed with nnU-Net (no new dependency, wheels for every platform, no torch pin), and ITK is
the toolkit ANTs itself is built on; a similarity then an affine stage with Mattes mutual
information is the standard ANTs recipe ("antsRegistration -t Similarity -t Affine -m MI").

Coordinates: nibabel affines are RAS; ITK's physical space is LPS. `to_sitk` / `from_sitk` convert,
so a transform found here maps template physical points (LPS) to subject physical points, ITK's
convention for resampling the subject onto the template grid.

A registration is checked after the fact: `tissue_similarity` is the share of the template's tissue
classes (CSF / GM / WM, inside its brain mask) that the registered image's intensities tell apart
(mutual information over the classes' entropy). It asks for no particular contrast, only that
tissues differ (T1, T2, FLAIR), and is near zero for a non-brain image or a brain left upside
down, so a failed registration is refused instead of being silently sliced.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from brainspade.errors import BrainspadeError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
COARSEST_LEVEL_MM = 8.0  # the registration starts on ~8 mm voxels, then halves down to the template's
# The template is brain only; sampling the metric near its brain (ANTs' fixed-image mask) keeps a
# scan's skull and scalp from pulling the fit. Margins are tried in turn until two results agree
# (None: the whole template grid); no one margin fitted every test scan.
MASK_MARGINS_MM = (4.0, 12.0, None)
METRIC_SAMPLES = 40_000  # random points per metric evaluation: enough for a 12-parameter fit, seconds at 1-2 mm
# Rotated starts, tried only when no two margins' results agree: tilts of a head in
# the scanner beyond what the optimiser recovers from the centre-of-mass start (about 15 degrees).
ROTATED_STARTS = (("x", 25.0), ("x", -25.0), ("y", 25.0), ("y", -25.0), ("z", 25.0), ("z", -25.0))
ROTATED_START_MARGIN_MM = 12.0
SIMILARITY_BINS = 32  # intensity bins of tissue_similarity's joint histogram


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and voxel-to-RAS affine (what a NIfTI header says)."""

    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass(frozen=True)
class RegistrationTarget:
    """Where scans are registered to (the template at one resolution) and how bad a result may be."""

    resolution_mm: int
    min_similarity: float
    seed: int = 0  # the metric's random sampling


@dataclass(frozen=True)
class Template:
    """The MNI152 2009 template at one resolution: T1 (brain only), brain mask, hard tissue classes."""

    t1: np.ndarray
    brain: np.ndarray  # bool (X, Y, Z)
    tissue: np.ndarray  # int8 (X, Y, Z): 0 outside the brain, 1 CSF, 2 GM, 3 WM
    grid: Grid
    resolution_mm: int


@dataclass(frozen=True)
class Registration:
    """A subject's scan registered to the template: the transform and how well the result matches."""

    transform: sitk.Transform  # template physical point (LPS) -> subject physical point (LPS)
    similarity: float  # tissue_similarity of the registered image
    start: str = "moments"  # where the search began: "moments", or a rotated start such as "x+25"


@lru_cache(maxsize=3)
def load_template(resolution_mm: int) -> Template:
    """nilearn's MNI152 2009 template at `resolution_mm` (1, 2 or 4), as the phantom uses it."""
    from brainspade.data.phantom import load_templates

    templates = load_templates(resolution_mm)
    brain = templates.healthy_pv[0] < 0.5
    tissue = np.where(brain, np.argmax(templates.healthy_pv[1:], axis=0) + 1, 0).astype(np.int8)
    return Template(templates.t1, brain, tissue, Grid(templates.shape, templates.affine), resolution_mm)


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A (X, Y, Z) or (X, Y, Z, C) array with its RAS affine as a SimpleITK image (C: a vector image).

    ITK grids cannot shear: an affine with shear is replaced by its nearest rotation (polar
    decomposition), which moves voxels by less than the shear itself.
    """
    array = np.asarray(array, dtype=np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(array, (0, 1, 2), (2, 1, 0))),
                                   isVector=array.ndim == 4)
    linear = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    left, _, right = np.linalg.svd(linear / spacing)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (left @ right).ravel()])
    image.SetOrigin([float(o) for o in RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]])
    return image


def from_sitk(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image back as a (X, Y, Z[, C]) array (the inverse of `to_sitk`'s axis order)."""
    array = sitk.GetArrayFromImage(image)
    return np.moveaxis(array, (0, 1, 2), (2, 1, 0))


def reference_image(grid: Grid) -> sitk.Image:
    """An empty image on `grid`, the target of a resampling."""
    return to_sitk(np.zeros(grid.shape, dtype=np.float32), grid.affine)


def register_to_template(image: np.ndarray, affine: np.ndarray, template: Template, seed: int = 0,
                         accept: float = 0.0) -> Registration:
    """Affinely register a subject's 3D image (any orientation, voxel size, field of view) to the template.

    A similarity stage (rotation, translation, one scale) from a centre-of-mass start, then a
    full affine stage, both multi-resolution with Mattes mutual information (any contrast), for
    each of the metric's template mask margins MASK_MARGINS_MM in turn, then from the centre of
    mass turned by each of ROTATED_STARTS (a head tilted further than the optimiser walks). The
    search stops once two starts agree (template brain moved less than a voxel apart, on average)
    on a result whose tissue similarity reaches `accept`, and returns the best result found (the
    caller checks it).

    Agreement, not the similarity alone, ends the search: the acceptance check is set for any
    contrast, down to FLAIR's weak tissue contrast, so a registration half a centimetre off can
    pass it while another start finds the right one (a T1 tilted by 45 degrees did this).
    """
    fixed = to_sitk(template.t1, template.grid.affine)
    moving = to_sitk(image, affine)

    def attempt(margin: float | None, rotation: tuple[str, float] | None) -> Registration:
        mask = None if margin is None else _near_brain(template, margin)
        transform = _register(fixed, moving, mask, template.resolution_mm, seed, rotation)
        registered = resample_to_template(image, affine, transform, template)
        start = "moments" if rotation is None else f"{rotation[0]}{rotation[1]:+.0f}"
        return Registration(transform, tissue_similarity(registered, template), start)

    points = np.argwhere(template.brain)[::7]
    found: list[Registration] = []
    starts = [(margin, None) for margin in MASK_MARGINS_MM]
    starts += [(ROTATED_START_MARGIN_MM, rotation) for rotation in ROTATED_STARTS]
    for margin, rotation in starts:
        new = attempt(margin, rotation)
        agrees = any(_mean_distance_mm(new.transform, old.transform, points, template.grid.affine)
                     < template.resolution_mm for old in found)
        found.append(new)
        if agrees and new.similarity >= accept:
            break
    return max(found, key=lambda result: result.similarity)


def _mean_distance_mm(a: sitk.Transform, b: sitk.Transform, voxels: np.ndarray, affine: np.ndarray) -> float:
    """How far apart (mm, on average) two template-to-subject transforms send the template voxels `voxels`."""
    points = np.c_[voxels, np.ones(len(voxels))] @ np.asarray(affine).T
    moved_a, moved_b = points @ transform_matrix(a).T, points @ transform_matrix(b).T
    return float(np.linalg.norm((moved_a - moved_b)[:, :3], axis=1).mean())


def _near_brain(template: Template, margin_mm: float) -> sitk.Image:
    near = distance_transform_edt(~template.brain) * template.resolution_mm <= margin_mm
    return sitk.Cast(to_sitk(near.astype(np.float32), template.grid.affine), sitk.sitkUInt8)


def _register(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image | None, resolution_mm: int,
              seed: int, rotation: tuple[str, float] | None = None) -> sitk.Transform:
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    if rotation is not None:  # turned about the template's own x, y or z axis through the centre of mass
        axis, degrees = rotation
        start.SetRotation(tuple(float(axis == name) for name in "xyz"), np.deg2rad(degrees))
    similarity = _run_stage(fixed, moving, mask, start, resolution_mm, seed, iterations=150)
    affine_start = sitk.AffineTransform(3)
    affine_start.SetCenter(similarity.GetCenter())
    affine_start.SetMatrix(similarity.GetMatrix())
    affine_start.SetTranslation(similarity.GetTranslation())
    return _run_stage(fixed, moving, mask, affine_start, resolution_mm, seed, iterations=150)


def _run_stage(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, start: sitk.Transform, resolution_mm: int,
               seed: int, iterations: int) -> sitk.Transform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # ITK reads a seed of 0 as "the wall clock": shift by one so that every seed is reproducible.
    method.SetMetricSamplingPercentage(min(1.0, METRIC_SAMPLES / np.prod(fixed.GetSize())), seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = [f for f in (int(COARSEST_LEVEL_MM // resolution_mm), int(COARSEST_LEVEL_MM // (2 * resolution_mm)))
              if f > 1]
    method.SetShrinkFactorsPerLevel([*shrink, 1])
    method.SetSmoothingSigmasPerLevel([*[f / 2 for f in shrink], 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(start, inPlace=False)
    try:
        found = method.Execute(fixed, moving)
    except RuntimeError as error:  # ITK stops when too few samples overlap: the images do not meet at all
        raise BrainspadeError(f"registration failed ({str(error).strip().splitlines()[-1][:100]})") from None
    return found.GetNthTransform(0) if isinstance(found, sitk.CompositeTransform) else found


def resample_to_template(array: np.ndarray, affine: np.ndarray, transform: sitk.Transform,
                         template: Template) -> np.ndarray:
    """An image (X, Y, Z) or PV maps (X, Y, Z, C) on the template grid, linear interpolation, 0 outside."""
    return resample(array, affine, transform, template.grid)


def resample(array: np.ndarray, affine: np.ndarray, transform: sitk.Transform, grid: Grid) -> np.ndarray:
    """`array` (with its RAS affine) sampled on `grid` through `transform` (grid point -> array point), linearly."""
    moved = sitk.Resample(to_sitk(array, affine), reference_image(grid), transform, sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32 if np.asarray(array).ndim == 3 else sitk.sitkVectorFloat32)
    return from_sitk(moved).astype(np.float32)


def tissue_similarity(registered: np.ndarray, template: Template) -> float:
    """Uncertainty coefficient I(intensity; class) / H(class) inside the template brain: the share of the
    template's tissue classes (CSF / GM / WM) that the registered image's intensities tell apart.

    Mutual information asks only that each tissue have intensities of its own, in any order and of any
    spread, so T1, T2 and FLAIR alike score well once the anatomy lines up; an image independent of the
    anatomy scores near 0. Intensities are binned between their 0.5th and 99.5th percentiles.
    """
    values = registered[template.brain].astype(np.float64)
    classes = template.tissue[template.brain].astype(np.int64) - 1
    low, high = np.percentile(values, (0.5, 99.5))
    if not high > low:
        return 0.0
    bins = np.clip(((values - low) / (high - low) * SIMILARITY_BINS).astype(np.int64), 0, SIMILARITY_BINS - 1)
    joint = np.bincount(bins * 3 + classes, minlength=3 * SIMILARITY_BINS).reshape(SIMILARITY_BINS, 3)
    joint = joint / joint.sum()
    class_entropy = _entropy(joint.sum(axis=0))
    information = _entropy(joint.sum(axis=1)) + class_entropy - _entropy(joint.ravel())
    return float(information / class_entropy) if class_entropy > 0 else 0.0


def _entropy(probabilities: np.ndarray) -> float:
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum())


def check_registration(registration: Registration, minimum: float, path: Path) -> None:
    """Refuse a registration whose result does not look like the template's anatomy."""
    if registration.similarity < minimum:
        raise BrainspadeError(
            f"{path}: registration to the MNI template failed (tissue similarity {registration.similarity:.2f} < "
            f"data.min_similarity={minimum}); is it a brain scan with a correct orientation in its header? "
            "Fix the header (or register it yourself and use data.register=none)"
        )


def save_transform(transform: sitk.Transform, path: Path) -> None:
    """Write the transform (ITK .tfm text: template physical point -> subject physical point, LPS)."""
    sitk.WriteTransform(transform, str(path))


def load_transform(path: Path) -> sitk.Transform:
    return sitk.ReadTransform(str(path))


def pose_of(transform: sitk.Transform) -> dict[str, float]:
    """The pose a registration found, for a report: the subject's head relative to the template (RAS):
    rotation about x, y, z in degrees (the nearest rotation's Euler angles, extrinsic x then y then z),
    scale along each template axis (column norms), and where the template's origin lands, in mm."""
    from scipy.linalg import polar
    from scipy.spatial.transform import Rotation

    matrix = transform_matrix(transform)
    rotation, _ = polar(matrix[:3, :3])
    if np.linalg.det(rotation) < 0:  # a mirrored scan: report the rotation of the unmirrored part
        rotation = -rotation
    angles = Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)
    scales = np.linalg.norm(matrix[:3, :3], axis=0)
    return {**{f"rotation_{a}_deg": round(float(v), 2) for a, v in zip("xyz", angles, strict=True)},
            **{f"scale_{a}": round(float(v), 4) for a, v in zip("xyz", scales, strict=True)},
            **{f"translation_{a}_mm": round(float(v), 2) for a, v in zip("xyz", matrix[:3, 3], strict=True)}}


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 matrix of an affine ITK transform in RAS coordinates (template point -> subject point)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    translation = np.asarray(transform.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip
