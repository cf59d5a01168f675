"""A site's scanner, fitted to its unlabelled images by analysis by synthesis, and put onto generated pairs.

The quantile map moves a site's noise and global contrast, but a monotone map of pooled brain intensities cannot
recover a blurred, biased site's per-tissue levels (its grey and white matter peaks merge;
benchmarks/image_generator.md). This model says how the site's images are made instead, in the way of SAMSEG's and
SynthSeg's generative models: an image is the label map's tissue fractions times per-tissue levels, each tissue
carrying a faint smooth multiplicative texture, blurred in-plane, times a smooth bias field, with Rician noise,
z-scored in the brain: the phantom's own image model (data/intensity.py), on 2D slices. Its parameters are chosen so
that the source data sets' train-split label maps, rendered with them, have the site's pooled brain intensity
quantiles, fine-residual spread and edge strength (measure.summaries); the site's images stay unlabelled. The anatomy
is assumed to be alike in both sets (as the quantile map assumes): the model fits contrast and scanner, not anatomy.

A generated pair keeps a share of what the generator made beyond its tissue levels (its texture, scaled to the
site's contrast; `generator_texture`); its levels become the site's, then the site's texture, blur, bias and noise
follow. Label maps are known for generated pairs, which is what makes per-tissue levels possible at all. The
generator's soft borders and blotches are not a target site's: with all of them kept, phantom siteB-styled images
read as another site to the evaluation's site classifier at some lengths of training (benchmarks/image_generator.md).

The texture is what makes the levels identifiable: without it, a site whose tissues vary within themselves (every
real one) is fitted best by wrong levels that spread the pooled quantiles instead (benchmarks/image_generator.md).
Measured limits: a tissue with a small share whose compartments are a few blur widths across (thin CSF) is the
least certain level and varies with the slice draw (phantom siteB, its unlabelled train slices z-scored in the
template brain: CSF 0.25 of GM from 64 slices, 0.49 from 192, truth 0.42; WM 1.24 and 1.26, truth 1.24); the model
is 2D (no through-plane blur). A 2D stand-in for that blur,
fitted from single slices or stated from the voxel size, made the fit darken CSF instead
(benchmarks/image_generator.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, zoom
from scipy.optimize import minimize

from brainspade.data.intensity import apply_bias, mix_tissues, rician_magnitude
from brainspade.data.slicing import background_channel
from brainspade.engine.logging import progress
from brainspade.generation.site_look.measure import MIN_PIXELS, summaries

MIN_TISSUE_SHARE = 0.02  # a tissue with less of the reference brains than this gets no level of its own
BIAS_COARSE_GRID = 4  # the bias field varies over about a third of the field of view
MAX_BLUR_PX = 3.0
MAX_TEXTURE = 0.3
TEXTURE_CORRELATION_PX = 3.0  # the tissue texture varies over a few pixels (a few mm)
SIMPLEX_RESTARTS = 2
ORDER_PENALTY = 10.0  # per unit of level that two tissues cross


@dataclass(frozen=True)
class ScannerModel:
    """How a site's images are made from tissue fractions, on the z-scored scale of the slice cache (a `SiteLook`).

    Attributes:
        channels: the PV channels, in the order of `levels`.
        levels: intensity of each channel; the background's is 0 and the most common tissue's 1.
        blur: sd in pixels of the in-plane Gaussian point spread.
        texture: sd of each tissue's smooth multiplicative texture (correlated over TEXTURE_CORRELATION_PX).
        bias: sd of the log of the smooth multiplicative bias field.
        noise: sd of each complex Rician noise component, relative to the most common tissue's level.
        misfit: the fit's loss at its optimum (0: the references reproduce the site's summaries exactly).
        generator_texture: share of a generated image's own texture that `apply` keeps (not fitted: a choice of how
            much of the generator's image survives; 0 renders each label map with the model alone).
    """

    channels: tuple[str, ...]
    levels: tuple[float, ...]
    blur: float
    texture: float
    bias: float
    noise: float
    misfit: float
    generator_texture: float = 1.0

    @property
    def background(self) -> int:
        return background_channel(self.channels)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, channels: Sequence[str]) -> ScannerModel:
        """A recorded model (`as_dict`) for these PV channels; ValueError naming what is wrong with it."""
        fields = {"channels", "levels", "blur", "texture", "bias", "noise", "misfit", "generator_texture"}
        if not isinstance(values, dict) or set(values) != fields:
            raise ValueError(f"not a scanner model: expected the keys {sorted(fields)}")
        if list(values["channels"]) != list(channels):
            raise ValueError(f"fitted for the channels {values['channels']}, not {list(channels)}")
        numbers = [*values["levels"], *(values[k] for k in sorted(fields - {"channels", "levels"}))]
        if len(values["levels"]) != len(channels) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in numbers):
            raise ValueError("its levels and parameters must be one finite number per channel and per key")
        return cls(tuple(channels), tuple(float(v) for v in values["levels"]), float(values["blur"]),
                   float(values["texture"]), float(values["bias"]), float(values["noise"]), float(values["misfit"]),
                   float(values["generator_texture"]))

    def render(self, pv_maps: np.ndarray, generated: np.ndarray | None, seeds: Sequence[int]) -> np.ndarray:
        """(B, C, H, W) tissue fractions (+ (B, H, W) generated texture on the levels' scale) -> (B, H, W) z-scored
        images."""
        rngs = [np.random.default_rng(int(seed)) for seed in seeds]
        shape = pv_maps.shape[2:]
        fields = [unit_fields(rng, shape, pv_maps.shape[1]) for rng in rngs]
        return render_slices(np.asarray(pv_maps, np.float64), np.array(self.levels), self.blur, self.texture, self.bias,
                             self.noise, fields, self.background, generated)

    def describe(self) -> str:
        levels = ", ".join(f"{c} {v:.2f}" for k, (c, v) in enumerate(zip(self.channels, self.levels, strict=True))
                           if k != self.background)
        return (f"site model: levels {levels}; texture sd {self.texture:.3f}, blur sd {self.blur:.2f} px, "
                f"bias log-sd {self.bias:.3f}, noise sd {self.noise:.3f} (misfit {self.misfit:.4f}); "
                f"{self.generator_texture:.2f} of the generator's texture kept")

    def apply(self, images: np.ndarray, seeds: Sequence[int], pv_maps: np.ndarray) -> np.ndarray:
        """(B, 1, H, W) generated images and their (B, C, H, W) PV maps -> the same pairs with the site's look,
        image i's texture, bias and noise seeded with seeds[i].

        The generator's tissue levels are fitted per image (least squares on the PV map); what is left over is its
        texture, scaled by the ratio of the site's tissue contrast to the image's, and `generator_texture` of it is kept.
        """
        images = np.asarray(images, np.float64)
        pv_maps = np.asarray(pv_maps, np.float64)
        if self.generator_texture == 0:
            return self.render(pv_maps, None, seeds)[:, None].astype(np.float32)
        textures = np.stack([generated_texture(image[0], pv, np.array(self.levels), self.background)
                             for image, pv in zip(images, pv_maps, strict=True)])
        return self.render(pv_maps, self.generator_texture * textures, seeds)[:, None].astype(np.float32)


def mean_tissue_levels(images: np.ndarray, pv_maps: np.ndarray) -> np.ndarray:
    """(S, H, W) images and their (S, C, H, W) PV maps -> each channel's level, by least squares over all pixels.
    A channel absent from the maps gets the mean of the others' levels (it has no say in the fit)."""
    pv_maps = np.asarray(pv_maps, np.float64)
    design = np.moveaxis(pv_maps, 1, -1).reshape(-1, pv_maps.shape[1])
    present = design.sum(0) >= MIN_PIXELS
    levels = np.full(pv_maps.shape[1], np.nan)
    levels[present] = np.linalg.lstsq(design[:, present], np.asarray(images, np.float64).ravel(), rcond=None)[0]
    levels[~present] = np.mean(levels[present])
    return levels


def generated_texture(image: np.ndarray, pv: np.ndarray, site_levels: np.ndarray, background: int) -> np.ndarray:
    """What a generated image holds beyond its tissue levels, inside the brain, on the site's level scale."""
    present = pv.reshape(len(pv), -1).sum(1) >= MIN_PIXELS
    design = pv.reshape(len(pv), -1)[present].T
    own_levels = np.linalg.lstsq(design, image.ravel(), rcond=None)[0]
    residual = image - (design @ own_levels).reshape(image.shape)
    weights = pv.reshape(len(pv), -1)[present].sum(1)
    # Contrast = the mass-weighted sd of the tissue levels (background included: it is what z-scoring sees).
    own_spread = np.sqrt(np.cov(own_levels, aweights=weights)) if present.sum() > 1 else 1.0
    site_spread = np.sqrt(np.cov(site_levels[present], aweights=weights)) if present.sum() > 1 else 1.0
    brain = pv[background] < 0.5
    return residual * brain * (site_spread / max(own_spread, 1e-6))


def smooth_unit_field(rng: np.random.Generator, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """A zero-mean unit-sd field varying over shape / grid pixels (cubic interpolation of a coarse normal grid)."""
    field = zoom(rng.standard_normal(grid), (shape[0] / grid[0], shape[1] / grid[1]), order=3, mode="nearest")
    return (field - field.mean()) / max(float(field.std()), 1e-8)


SliceFields = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def unit_fields(rng: np.random.Generator, shape: tuple[int, int], n_channels: int) -> SliceFields:
    """One slice's random fields at unit sd: the smooth bias, the two noise components, and (C, H, W) tissue textures."""
    bias = smooth_unit_field(rng, shape, (BIAS_COARSE_GRID, BIAS_COARSE_GRID))
    real_noise, imaginary_noise = rng.standard_normal(shape), rng.standard_normal(shape)
    grid = tuple(max(2, round(n / TEXTURE_CORRELATION_PX)) for n in shape)
    textures = np.stack([smooth_unit_field(rng, shape, grid) for _ in range(n_channels)])
    return bias, real_noise, imaginary_noise, textures


def render_slices(pv_maps: np.ndarray, levels: np.ndarray, blur: float, texture: float, bias: float, noise: float,
                  fields: Sequence[SliceFields], background: int, generated: np.ndarray | None = None) -> np.ndarray:
    """The model's images of (S, C, H, W) tissue fractions (+ (S, H, W) generated texture on the levels' scale),
    z-scored in the brain (background fraction < 0.5); the phantom's tissue mixing, bias and Rician noise."""
    tissue_textures = 1.0 + texture * np.stack([f[3] for f in fields])
    ideal = mix_tissues(pv_maps, levels, np.moveaxis(tissue_textures, 1, 0), axis=1)
    if generated is not None:
        ideal = ideal + generated
    if blur > 0:
        ideal = gaussian_filter(ideal, (0, blur, blur), mode="nearest")
    out = np.empty_like(ideal)
    for k, (bias_field, real_noise, imaginary_noise, _) in enumerate(fields):
        magnitude = rician_magnitude(apply_bias(ideal[k], bias, bias_field), noise, real_noise, imaginary_noise)
        brain = pv_maps[k, background] < 0.5
        values = magnitude[brain] if brain.sum() > 1 else magnitude.ravel()
        out[k] = (magnitude - values.mean()) / max(float(values.std()), 1e-6)
    return out


def fit_scanner_model(site_slices: np.ndarray, pv_maps: np.ndarray, channels: Sequence[str],
                      initial_levels: np.ndarray, seed: int = 0, max_evaluations: int = 400) -> ScannerModel:
    """Fit a `ScannerModel` to (S, H, W) unlabelled z-scored site slices with (S', C, H, W) reference tissue fractions.

    `initial_levels`: a start for each channel's level: the generator's own levels for that site's style, which
    already have the site's modality; the fitted tissues keep their order.
    Tissues with less than MIN_TISSUE_SHARE of the reference brains are placed by the line from the start's to the
    fitted levels of the others.
    """
    pv_maps = np.asarray(pv_maps, np.float64)
    target = summaries(site_slices)
    background = background_channel(channels)
    brain = pv_maps[:, background] < 0.5
    shares = np.array([pv_maps[:, c][brain].sum() for c in range(len(channels))]) / max(brain.sum(), 1)
    shares[background] = 0.0
    reference = int(np.argmax(shares))
    free = [c for c in range(len(channels)) if shares[c] >= MIN_TISSUE_SHARE and c not in (background, reference)]
    start = np.asarray(initial_levels, np.float64)
    if not abs(start[reference] - start[background]) > 1e-6:
        raise ValueError(f"the start levels give {channels[reference]} the background's level: no contrast to start from")
    start = (start - start[background]) / (start[reference] - start[background])
    rng = np.random.default_rng(seed)
    fields = [unit_fields(rng, pv_maps.shape[2:], len(channels)) for _ in range(len(pv_maps))]

    def unpack(x: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
        levels = start.copy()
        levels[background], levels[reference] = 0.0, 1.0
        levels[free] = np.abs(x[: len(free)])  # magnitude images: no tissue is darker than zero signal
        blur, texture, bias, noise = x[len(free):]
        return (levels, float(np.clip(blur, 0, MAX_BLUR_PX)), float(np.clip(abs(texture), 0, MAX_TEXTURE)),
                float(abs(bias)), float(abs(noise)))

    # The tissues keep the start's order: pooled intensities alone cannot tell a darker GM from a darker WM
    # when their shares are alike, and the start (the generator's own levels for this style) has the modality.
    fitted = sorted([*free, reference], key=lambda c: start[c])

    bar = progress(total=max_evaluations, desc="site-model fit", unit="render")

    def loss(x: np.ndarray) -> float:
        bar.update(1)
        levels, blur, texture, bias, noise = unpack(x)
        rendered = render_slices(pv_maps, levels, blur, texture, bias, noise, fields, background)
        disorder = sum(max(levels[a] - levels[b], 0.0) for a, b in zip(fitted, fitted[1:], strict=False))
        return float(np.mean((summaries(rendered) - target) ** 2)) + ORDER_PENALTY * disorder

    x = np.concatenate([start[free], [0.5, 0.0, 0.05, 0.03]])  # blur (px), texture, bias log-sd, noise: a mild scanner
    # Steps of the first simplex: scipy's default (5% of each value) searches too locally to leave the start's levels.
    steps = np.concatenate([np.full(len(free), 0.15), [0.3, 0.04, 0.04, 0.02]])
    for _ in range(SIMPLEX_RESTARTS):  # a fresh simplex around the best point: Nelder-Mead stalls on collapsed ones
        simplex = np.vstack([x, x + np.diag(steps)])
        result = minimize(loss, x, method="Nelder-Mead",
                          options={"maxfev": max_evaluations // SIMPLEX_RESTARTS, "xatol": 1e-3, "fatol": 1e-6,
                                   "adaptive": True, "initial_simplex": simplex})
        x, steps = result.x, steps / 2
    bar.close()
    levels, blur, texture, bias, noise = unpack(result.x)
    # A tissue too rare to fit (a lesion in healthy references) keeps where the generator puts it relative to the
    # fitted ones: the least-squares line from start to fitted levels, never below the background.
    known = [background, reference, *free]
    others = [c for c in range(len(channels)) if c not in known]
    if others:
        slope, intercept = np.polyfit(start[known], levels[known], 1)
        levels[others] = np.maximum(slope * start[others] + intercept, 0.0)
    return ScannerModel(tuple(channels), tuple(float(v) for v in levels), blur, texture, bias, noise, float(result.fun))
