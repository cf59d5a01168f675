"""The pooled quantile map: a site's contrast and noise, measured on its unlabelled images, put onto generated images.

A monotone map of intensities, as intensity standardisation does in classical MRI pipelines (Nyul & Udupa's
histogram standardisation, at the level of a whole set of slices):
- contrast: the brain intensity quantiles pooled over many slices of the site are matched by the same quantiles
  pooled over images the generator made with that site's styles. One map for the whole run: a slice with more grey
  matter than average keeps it, since pooled over many slices the two sets have the same mix of tissues;
- noise: the spread of the fine residual inside homogeneous neighbourhoods (classes of a three-class Gaussian
  mixture over intensity); generated images get the Gaussian noise they lack beyond what they lack on the
  generator's own training data (that deficit is texture the SPADE does not make, not scanner noise).
No bias is matched (per-slice estimates did not separate the phantom's sites); a blur only on request
(`blur_sigmas`), chosen by edge strength relative to the generator's own data.
Unsupervised tissue levels (a mixture's class means) fail on blurred, noisy sites: their grey and white matter
peaks merge. A monotone map of pooled intensities cannot recover such a site's per-tissue levels either; the
scanner model (scanner_model.py) does, from the label maps of generated pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from brainspade.generation.site_look.measure import MIN_PIXELS, brain_interior, edge_strength, residual_noise

QUANTILE_LEVELS = tuple(np.round(np.linspace(0.01, 0.99, 99), 2).tolist())
N_CLASSES = 3  # intensity classes whose 3x3-homogeneous interiors measure the noise
MAX_FIT_PIXELS = 100_000
BACKGROUND_MARGIN = 0.05  # brain quantiles closer than this to the background level are no anchors of the map


@dataclass(frozen=True)
class Appearance:
    """The look of a set of z-scored slices.

    Attributes:
        background: median intensity outside the brain.
        quantiles: brain intensity at each of QUANTILE_LEVELS, pooled over the slices.
        noise: median over slices of the robust sd of the 3x3 residual in homogeneous neighbourhoods.
        n_slices: how many slices were measured.
    """

    background: float
    quantiles: tuple[float, ...]
    noise: float
    n_slices: int


def homogeneous_pixels(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels whose whole 3x3 neighbourhood is valid and shares their label: their residual is noise."""
    same = valid.copy()
    padded_labels = np.pad(labels, 1, mode="edge")
    padded_valid = np.pad(valid, 1, constant_values=False)
    height, width = labels.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= (padded_labels[dy : dy + height, dx : dx + width] == labels)
            same &= padded_valid[dy : dy + height, dx : dx + width]
    return same


def measure_appearance(slices: np.ndarray, seed: int = 0) -> Appearance:
    """(S, H, W) z-scored slices of one site (or one generator run) -> their `Appearance`."""
    slices = np.asarray(slices, dtype=np.float64)
    masks = [brain_interior(s) for s in slices]
    brain = np.concatenate([s[m] for s, m in zip(slices, masks, strict=True)])
    outside = np.concatenate([s[~m] for s, m in zip(slices, masks, strict=True)])
    if brain.size < N_CLASSES * MIN_PIXELS:
        raise ValueError(f"{len(slices)} slices hold {brain.size} brain pixels: too few to measure their appearance")
    rng = np.random.default_rng(seed)
    fit_pixels = rng.choice(brain, size=min(MAX_FIT_PIXELS, brain.size), replace=False)
    # Imported here: scikit-learn is needed only by this opt-in map, not by every `sample`.
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(N_CLASSES, random_state=seed).fit(fit_pixels[:, None])
    noises = []
    for image, mask in zip(slices, masks, strict=True):
        if mask.sum() < 4 * MIN_PIXELS:
            continue
        labels = np.full(image.shape, -1, dtype=np.int64)
        labels[mask] = mixture.predict(image[mask][:, None])
        noise = residual_noise(image, homogeneous_pixels(labels, mask))
        if noise is not None:
            noises.append(noise)
    return Appearance(background=float(np.median(outside)) if outside.size else float(brain.min()),
                      quantiles=tuple(float(q) for q in np.quantile(brain, QUANTILE_LEVELS)),
                      noise=float(np.median(noises)) if noises else 0.0, n_slices=len(slices))


def _increasing(values: np.ndarray) -> np.ndarray:
    """Strictly increasing copy (ties of a quantized histogram nudged apart), so interpolation is defined."""
    return values + np.arange(len(values)) * 1e-6


@dataclass(frozen=True)
class QuantileMap:
    """The monotone intensity map and the added noise that take generated images to a site's look (a `SiteLook`).

    Attributes:
        generated: the appearance of the reference images the generator made with the site's styles.
        site: the appearance of the site's (style) images.
        added_noise: sd of the Gaussian noise added after the intensity map.
        blur: sd in pixels of the in-plane Gaussian blur applied before the map (0: none).
    """

    generated: Appearance
    site: Appearance
    added_noise: float
    blur: float = 0.0

    def map_intensities(self, images: np.ndarray) -> np.ndarray:
        """The pooled quantile-to-quantile map from background to background, continued beyond with slope 1.

        Only the quantiles above the background on both sides are anchors: a FLAIR brain's suppressed CSF can
        be darker than the background, and an anchor out of order would fold the map (or, left out, send the
        background to the site's darkest brain level). A steeper continuation would stretch the few far
        outliers of a generated image to absurd values.
        """
        x, y = np.array(self.generated.quantiles), np.array(self.site.quantiles)
        above = (x > self.generated.background + BACKGROUND_MARGIN) & (y > self.site.background + BACKGROUND_MARGIN)
        x = _increasing(np.concatenate([[self.generated.background], x[above]]))
        y = _increasing(np.concatenate([[self.site.background], y[above]]))
        out = np.interp(images, x, y)
        out = np.where(images < x[0], y[0] + (images - x[0]), out)
        return np.where(images > x[-1], y[-1] + (images - x[-1]), out)

    def describe(self) -> str:
        return (f"quantile map: added noise sd {self.added_noise:.3f}, blur sd {self.blur:.2f} px, brain median "
                f"{self.generated.quantiles[49]:.2f} -> {self.site.quantiles[49]:.2f}")

    def apply(self, images: np.ndarray, seeds: Sequence[int], pv_maps: np.ndarray | None = None) -> np.ndarray:
        """(B, ..., H, W) generated images -> blurred, mapped images with noise; image i's noise seeded with seeds[i].
        The map reads intensities only: `pv_maps` (which the scanner model needs) is unused."""
        images = np.asarray(images, dtype=np.float64)
        if self.blur > 0:
            images = gaussian_filter(images, [0] * (images.ndim - 2) + [self.blur, self.blur], mode="nearest")
        mapped = self.map_intensities(images)
        if self.added_noise > 0:
            noise = np.stack([np.random.default_rng(int(seed)).standard_normal(mapped.shape[1:]) for seed in seeds])
            mapped = mapped + self.added_noise * noise
        return mapped.astype(np.float32)

    def as_dict(self) -> dict:
        return asdict(self)


def _intensity_map(generated: np.ndarray, site: Appearance, map_levels: bool, seed: int) -> tuple[QuantileMap, float]:
    """The map without noise, and the noise variance the mapped generated images lack against the site."""
    own = measure_appearance(generated, seed)
    # Without the level map the generated appearance is its own target: the identity map.
    transfer = QuantileMap(own, site if map_levels else own, 0.0)
    mapped = transfer.map_intensities(np.asarray(generated, np.float64)) if map_levels else generated
    return transfer, site.noise**2 - measure_appearance(mapped, seed).noise ** 2


def fit_quantile_map(generated: np.ndarray, site_slices: np.ndarray,
                     baseline: tuple[np.ndarray, np.ndarray] | None = None, map_levels: bool = True,
                     seed: int = 0, blur_sigmas: Sequence[float] = (0.0,)) -> QuantileMap:
    """(S, H, W) images the generator made with the site's styles + (S', H, W) site slices -> the map.

    `baseline`: (images the generator made with styles of its own training data, those training slices) of the
    same modality. Real images hold fine texture the generator does not make; on its own training data that
    deficit is texture, not noise, so only the noise variance a site lacks beyond it is added.
    `map_levels`: False keeps the generator's intensities and adds only the noise.
    `blur_sigmas`: candidate blurs, applied before the map (a blurred site's histogram has its tissue peaks merged,
    so the map is fitted after the blur); the one whose mapped images are as sharp, relative to the site, as
    the generator's own images are relative to its training data (the baseline; else equally sharp) is kept.
    """
    site = measure_appearance(site_slices, seed)
    site_edges = edge_strength(site_slices) if len(blur_sigmas) > 1 else 1.0
    # A source site is its own baseline (same images, same slices): its unblurred fit is measured once.
    own_is_site = baseline is not None and baseline[0] is generated and baseline[1] is site_slices
    own_fit, own_deficit, own_sharpness = None, 0.0, 1.0
    if baseline is not None:
        own_generated, own_slices = baseline
        own_site = site if own_slices is site_slices else measure_appearance(own_slices, seed)
        own_fit = _intensity_map(own_generated, own_site, map_levels, seed)
        own_deficit = max(own_fit[1], 0.0)
        if len(blur_sigmas) > 1:
            own_edges = site_edges if own_slices is site_slices else edge_strength(own_slices)
            own_sharpness = (edge_strength(own_fit[0].map_intensities(np.asarray(own_generated, np.float64)))
                             / max(own_edges, 1e-9))
    best, best_gap = None, np.inf
    for sigma in blur_sigmas:
        if sigma == 0 and own_is_site:
            transfer, deficit = own_fit
        else:
            blurred = (gaussian_filter(np.asarray(generated, np.float64), (0, sigma, sigma), mode="nearest")
                       if sigma > 0 else generated)
            transfer, deficit = _intensity_map(blurred, site, map_levels, seed)
        # A 3x3-mean residual keeps sqrt(8/9) of white noise; both sides are measured that way.
        candidate = QuantileMap(transfer.generated, transfer.site,
                                float(np.sqrt(max(deficit - own_deficit, 0.0) * 9.0 / 8.0)), float(sigma))
        if len(blur_sigmas) == 1:
            return candidate
        sharpness = edge_strength(candidate.apply(generated, range(len(generated)))) / max(site_edges, 1e-9)
        if abs(sharpness - own_sharpness) < best_gap:
            best, best_gap = candidate, abs(sharpness - own_sharpness)
    return best
