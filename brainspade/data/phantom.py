"""The embedded phantom data set: five synthetic MRI "sites" built from the MNI152 templates.

Every subject is the MNI152 2009 template anatomy (nilearn's offline copy) with its own random
smooth warp, small affine, cortical atrophy and ventricle size; ``siteT`` subjects also carry a
tumour core and an edema rim that push the surrounding tissue away. Labels are partial-volume
(PV) maps over :data:`PHANTOM_CHANNELS`; images are:

========  ========  ==========================================================================
site      modality  image
========  ========  ==========================================================================
siteA     T1        the real T1 template warped like the labels, mild scanner effects (source)
siteB     T1        tissue-intensity model, other GM/WM contrast, strong bias, noise, thick
                    slices (near out-of-distribution target)
siteC     FLAIR     tissue-intensity model (far out-of-distribution target)
siteT     T1+FLAIR  tissue-intensity model with tumour and edema (lesion source)
siteN     T1        the real T1 template warped like the labels through a monotone non-linear
                    curve, then TorchIO's MR artefacts: bias, thick slices, motion, ghosts,
                    spikes, noise (near out-of-distribution target outside the tissue-intensity
                    model: see data/other_physics.py)
========  ========  ==========================================================================

Each site has train, dev and test subjects (manifest column ``split``). Dev subjects are labelled
and are where any setting is chosen; test subjects are read only to report.

Layout written by :func:`build_phantom`::

    out_dir/<site>/<subject>_<modality>.nii.gz   3D float32 image
    out_dir/<site>/<subject>_labels.nii.gz       4D float32 PV map, last axis = PHANTOM_CHANNELS
    out_dir/manifest.csv                          subject,dataset,modality,split,image,labels
    out_dir/overview.png                          one row per site: image, PV argmax, lesions
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from brainspade.data.deformation import (
    apply_affine,
    radial_push,
    random_affine,
    random_displacement,
    resample,
    sample_displacement,
    voxel_grid,
)
from brainspade.data.intensity import (
    FLAIR_CONTRAST,
    T1_CONTRAST,
    T1_OTHER_SCANNER_CONTRAST,
    ScannerProfile,
    apply_scanner,
    jittered_means,
    render_tissue_image,
    tissue_textures,
)
from brainspade.data.other_physics import render_other_physics
from brainspade.data.random_fields import smooth_random_field
from brainspade.engine.logging import progress
from brainspade.settings import OtherPhysicsSettings, PhantomSettings

PHANTOM_CHANNELS: tuple[str, ...] = ("background", "csf", "gm", "wm", "tumour", "edema")
PHANTOM_LESION_CHANNELS: tuple[str, ...] = ("tumour", "edema")
PHANTOM_SITES: tuple[str, ...] = ("siteA", "siteB", "siteC", "siteT", "siteN")
SUPPORTED_RESOLUTIONS_MM: tuple[int, ...] = (1, 2, 4)
SPLITS: tuple[str, ...] = ("train", "dev", "test")  # the order of the counts in subjects_per_site
# Each split's code in a subject's seed, fixed apart from SPLITS' order: a subject's draws never depend on
# which other splits exist.
SPLIT_SEED_CODES: Mapping[str, int] = {"train": 0, "test": 1, "dev": 2}
MANIFEST_COLUMNS: tuple[str, ...] = ("subject", "dataset", "modality", "split", "image", "labels")

# The healthy template maps, in this order, are what gets warped; lesions are added afterwards.
_HEALTHY_CHANNELS = ("background", "csf", "gm", "wm")


@dataclass(frozen=True)
class SiteSpec:
    """What distinguishes one phantom site.

    Attributes:
        modalities: image modalities acquired per subject (all share one label map).
        contrasts: tissue-intensity model per modality; ``None`` means "use the real T1 template".
        scanner: the site's scanner degradation (``data/intensity.py``); ``None`` means the other-physics
            acquisition of ``data/other_physics.py`` (configured in ``phantom.other_physics``).
        has_lesions: whether subjects carry a tumour and edema.
    """

    modalities: tuple[str, ...]
    contrasts: Mapping[str, Mapping[str, float] | None]
    scanner: ScannerProfile | None
    has_lesions: bool


SITE_SPECS: Mapping[str, SiteSpec] = {
    "siteA": SiteSpec(
        modalities=("T1",),
        contrasts={"T1": None},
        scanner=ScannerProfile(blur_fwhm_mm=(0.0, 0.0, 0.0), bias_log_std=0.04, bias_correlation_mm=90.0,
                               noise_std=0.012, intensity_scale=1.0),
        has_lesions=False,
    ),
    "siteB": SiteSpec(
        modalities=("T1",),
        contrasts={"T1": T1_OTHER_SCANNER_CONTRAST},
        scanner=ScannerProfile(blur_fwhm_mm=(1.5, 1.5, 3.5), bias_log_std=0.15, bias_correlation_mm=70.0,
                               noise_std=0.035, intensity_scale=1.8),
        has_lesions=False,
    ),
    "siteC": SiteSpec(
        modalities=("FLAIR",),
        contrasts={"FLAIR": FLAIR_CONTRAST},
        scanner=ScannerProfile(blur_fwhm_mm=(1.0, 1.0, 2.5), bias_log_std=0.10, bias_correlation_mm=80.0,
                               noise_std=0.025, intensity_scale=0.6),
        has_lesions=False,
    ),
    "siteT": SiteSpec(
        modalities=("T1", "FLAIR"),
        contrasts={"T1": T1_CONTRAST, "FLAIR": FLAIR_CONTRAST},
        scanner=ScannerProfile(blur_fwhm_mm=(1.0, 1.0, 2.0), bias_log_std=0.08, bias_correlation_mm=80.0,
                               noise_std=0.02, intensity_scale=1.2),
        has_lesions=True,
    ),
    "siteN": SiteSpec(modalities=("T1",), contrasts={"T1": None}, scanner=None, has_lesions=False),
}

# Subject variability (all in mm unless stated).
WARP_AMPLITUDE_MM = 2.0
WARP_CORRELATION_MM = 30.0
MAX_ROTATION_DEG = 4.0
MAX_SCALE = 0.05
MAX_TRANSLATION_MM = 4.0
MAX_CORTICAL_ATROPHY = 0.35  # largest fraction of cortical GM turned into CSF
CORTICAL_DEPTH_MM = 6.0  # atrophy fades with depth below the brain surface
MAX_VENTRICLE_PUSH = 0.35
VENTRICLE_PUSH_WIDTH_MM = 22.0
TUMOUR_CORE_RADIUS_MM = (8.0, 18.0)
EDEMA_TO_CORE_RADIUS = (1.4, 2.0)
TUMOUR_PUSH_STRENGTH = (0.3, 0.55)
LESION_BORDER_MM = 1.2  # softness of the lesion PV borders
LESION_MIN_FRACTION = 0.01  # lesion fractions below this are set to exactly 0


@dataclass(frozen=True)
class PhantomTemplates:
    """The MNI152 template at one resolution, prepared for warping.

    Attributes:
        healthy_pv: float32 ``(4, X, Y, Z)`` fractions of background, CSF, GM, WM (sum to 1).
        t1: float32 ``(X, Y, Z)`` skull-stripped T1 template in [0, 1].
        affine: the template's voxel-to-RAS affine.
        voxel_size_mm: isotropic voxel size.
        depth_mm: distance of each voxel below the brain-mask surface (0 outside).
        ventricle_centre: voxel coordinates of the centroid of the deep CSF.
        t1_csf_mean: mean T1 template intensity in pure CSF (used to darken atrophied GM).
        t1_gm_mean: mean T1 template intensity in pure GM.
    """

    healthy_pv: np.ndarray
    t1: np.ndarray
    affine: np.ndarray
    voxel_size_mm: float
    depth_mm: np.ndarray
    ventricle_centre: np.ndarray
    t1_csf_mean: float
    t1_gm_mean: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)


@dataclass(frozen=True)
class LesionPlacement:
    """A tumour drawn for one subject (subject-space voxel coordinates)."""

    centre: np.ndarray
    core_radius_mm: float
    edema_radius_mm: float
    push_strength: float


@dataclass
class PhantomSubject:
    """One synthesised subject: its PV map and its images (one per modality)."""

    subject: str
    site: str
    split: str
    pv_maps: np.ndarray
    images: dict[str, np.ndarray]


def build_phantom(
    out_dir: Path,
    *,
    resolution_mm: int,
    subjects_per_site: Mapping[str, tuple[int, int, int]],
    seed: int,
    other_physics: OtherPhysicsSettings | None = None,
    show_progress: bool = True,
) -> Path:
    """Write the phantom data set into out_dir and return the path of out_dir/'manifest.csv'.

    Args:
        out_dir: folder to write into (created if needed; existing phantom files are replaced).
        resolution_mm: 1, 2 or 4 — the resolution of nilearn's MNI152 templates used.
        subjects_per_site: site name (one of :data:`PHANTOM_SITES`) to ``(n_train, n_dev, n_test)``.
            Sites left out get no subjects.
        seed: non-negative integer; a subject depends only on (seed, site, split, index), so
            changing the counts of other sites or splits never changes it.
        other_physics: siteN's acquisition; needed only when siteN has subjects.
        show_progress: show a tqdm bar over subjects.

    Returns:
        The path of ``out_dir/manifest.csv``.

    Raises:
        ValueError: for an unsupported resolution, an unknown site, bad counts, a bad seed, or siteN
            subjects without ``other_physics``.
    """
    validate_build_arguments(resolution_mm, subjects_per_site, seed)
    if other_physics is None and any(SITE_SPECS[site].scanner is None and sum(counts) > 0
                                     for site, counts in subjects_per_site.items()):
        raise ValueError("siteN is drawn by data/other_physics.py: pass other_physics (phantom.other_physics)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    templates = load_templates(resolution_mm)
    plan = [
        (site, split, index)
        for site in PHANTOM_SITES
        for split, count in zip(SPLITS, subjects_per_site.get(site, (0, 0, 0)), strict=True)
        for index in range(count)
    ]
    manifest_rows: list[dict[str, str]] = []
    overview_subjects: dict[str, PhantomSubject] = {}
    subjects = progress(plan, desc="phantom subjects", unit="subject") if show_progress else plan
    for site, split, index in subjects:
        subject = synthesize_subject(templates, site, split, index, seed, other_physics)
        manifest_rows.extend(write_subject(out_dir, subject, templates.affine))
        overview_subjects.setdefault(site, subject)
    manifest_path = out_dir / "manifest.csv"
    write_manifest(manifest_path, manifest_rows)
    write_overview(out_dir / "overview.png", list(overview_subjects.values()))
    return manifest_path


def validate_build_arguments(
    resolution_mm: int, subjects_per_site: Mapping[str, tuple[int, int, int]], seed: int
) -> None:
    """Raise ValueError with a clear message for any argument build_phantom cannot honour."""
    if isinstance(resolution_mm, bool) or resolution_mm not in SUPPORTED_RESOLUTIONS_MM:
        raise ValueError(f"resolution_mm must be one of {SUPPORTED_RESOLUTIONS_MM}, got {resolution_mm!r}")
    if not isinstance(subjects_per_site, Mapping):
        raise ValueError(f"subjects_per_site must map site name -> (n_train, n_dev, n_test), got {subjects_per_site!r}")
    unknown = sorted(set(subjects_per_site) - set(PHANTOM_SITES))
    if unknown:
        raise ValueError(f"unknown phantom site(s) {unknown}; known sites are {list(PHANTOM_SITES)}")
    for site, counts in subjects_per_site.items():
        if (
            not isinstance(counts, tuple | list)
            or len(counts) != len(SPLITS)
            or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in counts)
        ):
            raise ValueError(f"subjects_per_site[{site!r}] must be (n_train, n_dev, n_test) non-negative ints, "
                             f"got {counts!r}")
    if sum(sum(counts) for counts in subjects_per_site.values()) == 0:
        raise ValueError("subjects_per_site asks for no subjects at all")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


@lru_cache(maxsize=len(SUPPORTED_RESOLUTIONS_MM))
def load_templates(resolution_mm: int) -> PhantomTemplates:
    """Load nilearn's offline MNI152 templates and derive the healthy PV maps (cached).

    CSF is what the brain mask holds beyond GM and WM: this gives the ventricles and a rim of
    sulcal/subarachnoid CSF. The mask is softened by ~1 mm so the outer border is partial-volume
    rather than a binary step.
    """
    from nilearn import datasets  # imported lazily: nilearn import is slow and only needed here

    t1_image = datasets.load_mni152_template(resolution=resolution_mm)
    t1 = _as_float32(t1_image)
    gm = _as_float32(datasets.load_mni152_gm_template(resolution=resolution_mm))
    wm = _as_float32(datasets.load_mni152_wm_template(resolution=resolution_mm))
    hard_mask = _as_float32(datasets.load_mni152_brain_mask(resolution=resolution_mm)) > 0.5
    voxel_size_mm = float(resolution_mm)

    soft_mask = np.clip(gaussian_filter(hard_mask.astype(np.float32), sigma=1.0 / voxel_size_mm), 0.0, 1.0)
    # GM/WM probabilities leak slightly past the brain mask; the T1 template is zero there.
    gm, wm = gm * soft_mask, wm * soft_mask
    tissue = gm + wm
    overfull = np.maximum(tissue, 1.0)
    gm, wm = gm / overfull, wm / overfull
    csf = np.clip(soft_mask - gm - wm, 0.0, 1.0)
    background = np.clip(1.0 - csf - gm - wm, 0.0, 1.0)
    healthy_pv = normalise_channels(np.stack([background, csf, gm, wm]), axis=0)

    depth_mm = (distance_transform_edt(hard_mask) * voxel_size_mm).astype(np.float32)
    deep_csf = (healthy_pv[1] > 0.5) & (depth_mm > 20.0)
    ventricle_centre = np.argwhere(deep_csf).mean(axis=0)
    t1 = t1 * hard_mask
    templates = PhantomTemplates(
        healthy_pv=healthy_pv,
        t1=t1,
        affine=t1_image.affine.copy(),
        voxel_size_mm=voxel_size_mm,
        depth_mm=depth_mm,
        ventricle_centre=ventricle_centre,
        t1_csf_mean=float(t1[healthy_pv[1] > 0.7].mean()),
        t1_gm_mean=float(t1[healthy_pv[2] > 0.7].mean()),
    )
    for array in (templates.healthy_pv, templates.t1, templates.depth_mm):
        array.setflags(write=False)  # shared by every subject through the cache
    return templates


def _as_float32(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)


def normalise_channels(pv_maps: np.ndarray, axis: int) -> np.ndarray:
    """Clip to [0, 1] and rescale so the channels sum to 1 (all-zero voxels become background)."""
    pv_maps = np.clip(pv_maps, 0.0, 1.0).astype(np.float32)
    channels_first = np.moveaxis(pv_maps, axis, 0)  # a view: writing to it edits pv_maps
    channels_first[0][channels_first.sum(axis=0) <= 1e-6] = 1.0
    return pv_maps / pv_maps.sum(axis=axis, keepdims=True)


def subject_name(site: str, split: str, index: int) -> str:
    """Subject identifier, e.g. ``siteA_train_003``."""
    return f"{site}_{split}_{index:03d}"


def subject_rng(seed: int, site: str, split: str, index: int) -> np.random.Generator:
    """The generator of one subject, derived from (seed, site, split, index) only.

    crc32 of the site name (not Python's salted ``hash``) keeps it stable across processes.
    """
    return np.random.default_rng([int(seed), zlib.crc32(site.encode()), SPLIT_SEED_CODES[split], int(index)])


def synthesize_subject(
    templates: PhantomTemplates,
    site: str,
    split: str,
    index: int,
    seed: int,
    other_physics: OtherPhysicsSettings | None = None,
) -> PhantomSubject:
    """Synthesise one subject's PV map and images in memory.

    Args:
        templates: the prepared MNI152 templates (see :func:`load_templates`).
        site: one of :data:`PHANTOM_SITES`.
        split: one of :data:`SPLITS`.
        index: subject index within (site, split).
        seed: the data set seed.
        other_physics: siteN's acquisition (needed for siteN only).

    Returns:
        The subject; the same arguments always give byte-identical arrays.
    """
    if site not in SITE_SPECS:
        raise ValueError(f"unknown phantom site {site!r}; known sites are {list(PHANTOM_SITES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = SITE_SPECS[site]
    rng = subject_rng(seed, site, split, index)
    shape, voxel_size_mm = templates.shape, templates.voxel_size_mm

    healthy_pv, t1 = atrophied_templates(rng, templates)
    affine = random_affine(rng, shape, voxel_size_mm, MAX_ROTATION_DEG, MAX_SCALE, MAX_TRANSLATION_MM)
    displacement = random_displacement(rng, shape, voxel_size_mm, WARP_AMPLITUDE_MM, WARP_CORRELATION_MM)
    ventricle_push = rng.uniform(0.0, MAX_VENTRICLE_PUSH)
    lesion = draw_lesion(rng, templates, affine) if spec.has_lesions else None

    # One backward map, subject voxel -> template voxel: tumour push, then the subject's affine
    # and smooth warp, then the ventricle enlargement (defined around the template's ventricles).
    coords = voxel_grid(shape)
    if lesion is not None:
        coords = radial_push(
            coords, lesion.centre, lesion.core_radius_mm * 1.5 / voxel_size_mm, lesion.push_strength
        )
        warp = sample_displacement(displacement, coords)
    else:
        warp = displacement
    coords = apply_affine(affine, coords) + warp
    coords = radial_push(
        coords, templates.ventricle_centre, VENTRICLE_PUSH_WIDTH_MM / voxel_size_mm, ventricle_push
    )

    warped_healthy = [resample(channel, coords) for channel in healthy_pv]
    pv_maps = np.zeros((*shape, len(PHANTOM_CHANNELS)), dtype=np.float32)
    for channel_name, warped in zip(_HEALTHY_CHANNELS, warped_healthy, strict=True):
        pv_maps[..., PHANTOM_CHANNELS.index(channel_name)] = warped
    if lesion is not None:
        insert_lesion(rng, pv_maps, lesion, voxel_size_mm)
    pv_maps = normalise_channels(pv_maps, axis=-1)

    images = render_images(rng, spec, pv_maps, resample(t1, coords), voxel_size_mm, other_physics)
    return PhantomSubject(subject=subject_name(site, split, index), site=site, split=split,
                          pv_maps=pv_maps, images=images)


def atrophied_templates(rng: np.random.Generator, templates: PhantomTemplates) -> tuple[np.ndarray, np.ndarray]:
    """Turn a random, patchy fraction of the cortical GM into CSF, in the PV maps and the T1.

    Atrophy is strongest at the brain surface (cortex) and fades with depth, so deep GM is
    spared. The T1 is darkened by the same amount it would lose going from GM to CSF, so the
    real-texture image stays consistent with its labels.
    """
    level = rng.uniform(0.0, MAX_CORTICAL_ATROPHY)
    patchiness = smooth_random_field(rng, templates.shape, templates.voxel_size_mm, correlation_mm=25.0)
    cortical_weight = np.exp(-templates.depth_mm / np.float32(CORTICAL_DEPTH_MM))
    fraction = np.float32(level) * cortical_weight * np.clip(0.5 + 0.5 * patchiness, 0.0, 1.0)
    gm_lost = fraction * templates.healthy_pv[2]
    healthy_pv = templates.healthy_pv.copy()
    healthy_pv[1] += gm_lost
    healthy_pv[2] -= gm_lost
    t1 = templates.t1 - gm_lost * np.float32(templates.t1_gm_mean - templates.t1_csf_mean)
    return healthy_pv, t1.astype(np.float32)


def draw_lesion(rng: np.random.Generator, templates: PhantomTemplates, affine: np.ndarray) -> LesionPlacement:
    """Place a tumour in grey/white matter, deep enough for its core to stay inside the brain.

    The centre is drawn in template space and mapped to subject space with the inverse of the
    subject's affine; the smooth warp (a few mm) is small against the depth margin.
    """
    core_radius_mm = rng.uniform(*TUMOUR_CORE_RADIUS_MM)
    edema_radius_mm = core_radius_mm * rng.uniform(*EDEMA_TO_CORE_RADIUS)
    parenchyma = templates.healthy_pv[2] + templates.healthy_pv[3]
    candidates = np.flatnonzero((parenchyma > 0.9) & (templates.depth_mm > core_radius_mm + 8.0))
    if candidates.size == 0:  # cannot happen with the MNI template; keep the error explicit
        raise ValueError(f"no voxel deep enough in the brain for a {core_radius_mm:.1f} mm tumour")
    template_centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], templates.shape),
                               dtype=np.float64)
    subject_centre = (np.linalg.inv(affine) @ np.append(template_centre, 1.0))[:3]
    return LesionPlacement(
        centre=subject_centre.astype(np.float32),
        core_radius_mm=float(core_radius_mm),
        edema_radius_mm=float(edema_radius_mm),
        push_strength=float(rng.uniform(*TUMOUR_PUSH_STRENGTH)),
    )


def irregular_ball(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_size_mm: float,
    distance_mm: np.ndarray,
    radius_mm: float,
    roughness: float,
) -> np.ndarray:
    """Soft membership of a blob whose radius is modulated by smooth noise (an irregular ball)."""
    noise = smooth_random_field(rng, shape, voxel_size_mm, correlation_mm=max(radius_mm * 0.8, 2 * voxel_size_mm))
    local_radius = np.float32(radius_mm) * (1.0 + np.float32(roughness) * noise)
    border_mm = np.float32(max(LESION_BORDER_MM, 0.3 * voxel_size_mm))
    membership = 1.0 / (1.0 + np.exp(np.clip((distance_mm - local_radius) / border_mm, -50.0, 50.0)))
    membership[membership < LESION_MIN_FRACTION] = 0.0
    return membership.astype(np.float32)


def insert_lesion(
    rng: np.random.Generator, pv_maps: np.ndarray, lesion: LesionPlacement, voxel_size_mm: float
) -> None:
    """Add tumour core and edema rim to a warped healthy PV map (in place, sums stay 1).

    The core replaces any tissue; the edema infiltrates GM/WM only (never CSF or background).
    Healthy tissues are scaled down by exactly what the lesion takes.
    """
    shape = pv_maps.shape[:3]
    offset = voxel_grid(shape) - lesion.centre.reshape(3, 1, 1, 1)
    distance_mm = np.sqrt(np.sum(offset * offset, axis=0)) * np.float32(voxel_size_mm)
    core = irregular_ball(rng, shape, voxel_size_mm, distance_mm, lesion.core_radius_mm, roughness=0.3)
    edema_extent = irregular_ball(rng, shape, voxel_size_mm, distance_mm, lesion.edema_radius_mm, roughness=0.35)

    csf, gm, wm = (pv_maps[..., PHANTOM_CHANNELS.index(name)] for name in ("csf", "gm", "wm"))
    tissue = csf + gm + wm
    parenchyma = gm + wm
    tumour = core * tissue
    edema = edema_extent * (1.0 - core) * parenchyma
    pv_maps[..., PHANTOM_CHANNELS.index("tumour")] = tumour
    pv_maps[..., PHANTOM_CHANNELS.index("edema")] = edema
    pv_maps[..., PHANTOM_CHANNELS.index("csf")] = csf * (1.0 - core)
    parenchyma_kept = (1.0 - core) * (1.0 - edema_extent)
    pv_maps[..., PHANTOM_CHANNELS.index("gm")] = gm * parenchyma_kept
    pv_maps[..., PHANTOM_CHANNELS.index("wm")] = wm * parenchyma_kept


def render_images(
    rng: np.random.Generator,
    spec: SiteSpec,
    pv_maps: np.ndarray,
    warped_t1: np.ndarray,
    voxel_size_mm: float,
    other_physics: OtherPhysicsSettings | None = None,
) -> dict[str, np.ndarray]:
    """Render every modality of a subject and pass it through the site's scanner.

    A site without a scanner profile (siteN) is acquired by :func:`render_other_physics` with
    ``other_physics``, seeded from the subject's generator.
    """
    if spec.scanner is None and other_physics is None:
        raise ValueError("this site is drawn by data/other_physics.py: pass other_physics (phantom.other_physics)")
    textures = tissue_textures(rng, PHANTOM_CHANNELS[1:], pv_maps.shape[:3], voxel_size_mm)
    images = {}
    for modality in spec.modalities:
        contrast = spec.contrasts[modality]
        if contrast is None:
            ideal = warped_t1  # real template texture
        else:
            means = jittered_means(rng, contrast, relative_std=0.04)
            ideal = render_tissue_image(pv_maps, PHANTOM_CHANNELS, means, textures)
        if spec.scanner is None:
            brain_mask = pv_maps[..., PHANTOM_CHANNELS.index("background")] < 0.5
            images[modality] = render_other_physics(ideal, brain_mask, other_physics, int(rng.integers(2**31)),
                                                    voxel_size_mm)
        else:
            images[modality] = apply_scanner(rng, ideal, spec.scanner, voxel_size_mm)
    return images


def write_subject(out_dir: Path, subject: PhantomSubject, affine: np.ndarray) -> list[dict[str, str]]:
    """Write a subject's PV map and images as NIfTI; return its manifest rows."""
    site_dir = out_dir / subject.site
    site_dir.mkdir(parents=True, exist_ok=True)
    labels_relative = f"{subject.site}/{subject.subject}_labels.nii.gz"
    _save_nifti(subject.pv_maps, affine, out_dir / labels_relative)
    rows = []
    for modality, image in subject.images.items():
        image_relative = f"{subject.site}/{subject.subject}_{modality}.nii.gz"
        _save_nifti(image, affine, out_dir / image_relative)
        rows.append({"subject": subject.subject, "dataset": subject.site, "modality": modality,
                     "split": subject.split, "image": image_relative, "labels": labels_relative})
    return rows


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(np.ascontiguousarray(array, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write the manifest CSV (columns :data:`MANIFEST_COLUMNS`)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def write_overview(path: Path, subjects: list[PhantomSubject]) -> None:
    """One row per site: an axial image slice, the PV argmax, and the lesion outline if any.

    Sites with lesions are shown at the axial slice with the most lesion; others mid-axial.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    label_colours = ListedColormap(["black", "tab:blue", "tab:gray", "white", "tab:red", "gold"])
    lesion_channels = [PHANTOM_CHANNELS.index(name) for name in PHANTOM_LESION_CHANNELS]
    figure = Figure(figsize=(9, 3 * max(len(subjects), 1)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(len(subjects), 1), 3, squeeze=False)
    for row, subject in zip(axes, subjects, strict=False):
        lesion = subject.pv_maps[..., lesion_channels].sum(axis=-1)
        has_lesion = bool(lesion.max() > 0.5)
        z = int(np.argmax((lesion > 0.5).sum(axis=(0, 1)))) if has_lesion else subject.pv_maps.shape[2] // 2
        modality = next(iter(subject.images))
        image_slice = subject.images[modality][:, :, z].T
        row[0].imshow(image_slice, cmap="gray", origin="lower")
        row[0].set_title(f"{subject.subject} {modality}", fontsize=8)
        row[1].imshow(np.argmax(subject.pv_maps[:, :, z], axis=-1).T, cmap=label_colours, vmin=-0.5,
                      vmax=len(PHANTOM_CHANNELS) - 0.5, origin="lower", interpolation="nearest")
        row[1].set_title("PV argmax", fontsize=8)
        row[2].imshow(image_slice, cmap="gray", origin="lower")
        if has_lesion:
            row[2].contour(lesion[:, :, z].T, levels=[0.5], colors="red", linewidths=0.8, origin="lower")
        row[2].set_title("lesion outline" if has_lesion else "no lesions", fontsize=8)
        for axis in row:
            axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def make_phantom_folder(target: Path, settings: PhantomSettings, *, seed: int, force: bool = False) -> Path:
    """Build the phantom in `target` unless an identical one is there; return `target`.

    Built beside the target and swapped in at the end, so a crash never leaves half a data set.
    """
    from brainspade.engine.atomic import atomic_folder
    from brainspade.engine.stage import StageFolder, config_fingerprint

    fingerprint = config_fingerprint(settings, seed)
    if StageFolder(target, fingerprint).reusable(force):
        print(f"[make-phantom] {target} is up to date")
        return target
    with atomic_folder(target) as building:
        build_phantom(
            building,
            resolution_mm=settings.resolution_mm,
            subjects_per_site={site: tuple(counts) for site, counts in settings.subjects_per_site.items()},
            seed=seed,
            other_physics=settings.other_physics,
        )
        (building / "config.yaml").write_text(json.dumps(asdict(settings), indent=2) + "\n")
        StageFolder(building, fingerprint).finish({"manifest": "manifest.csv", "overview": "overview.png"})
    return target
