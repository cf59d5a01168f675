"""A site's look measured from intensities alone: its brain, fine-residual noise, edge strength and fit summaries.

Style images are unlabelled (a site's train split or a user's folder), so the brain is found from intensities, and
the images the generator makes are measured by the same rules: the quantile map and the scanner model compare the
two sides only through these functions. Slices are numpy (H, W) arrays on the z-scored scale of the slice cache.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, binary_fill_holes, gaussian_filter, uniform_filter

MIN_PIXELS = 32  # fewer brain (or homogeneous) pixels in a slice: it is not measured
EDGE_PX = 2  # pixels off the brain's outline before anything is measured
SUMMARY_QUANTILES = tuple(np.round(np.linspace(0.05, 0.95, 19), 2).tolist())
SHAPE_WEIGHT = 4.0  # weight of the log fine-residual and log edge-strength summaries against the quantiles'
# Stacks of slices (N, H, W) are filtered as one array: in-plane structures, nothing across slices.
IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_CROSS[1, 1, :] = IN_PLANE_CROSS[1, :, 1] = True  # a slice's own 4-connectivity (binary_fill_holes' default)
IN_PLANE_SQUARE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_SQUARE[1] = True  # a slice's 3x3 square


def median_3x3(slices: np.ndarray) -> np.ndarray:
    """Each slice of (N, H, W) 3x3-median-filtered, edges repeated: scipy's median_filter(size=3, mode="nearest")
    value for value, without a call per slice. The median of nine is the median of three: the largest of the
    columns' minima, the median of their medians and the smallest of their maxima (each a min/max of the values)."""
    padded = np.pad(np.asarray(slices), ((0, 0), (1, 1), (1, 1)), mode="edge")
    top, middle, bottom = padded[:, :-2], padded[:, 1:-1], padded[:, 2:]
    low, high = np.minimum(top, middle), np.maximum(top, middle)
    low, median, high = np.minimum(low, bottom), np.maximum(low, np.minimum(high, bottom)), np.maximum(high, bottom)

    def columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return values[..., :-2], values[..., 1:-1], values[..., 2:]

    a, b, c = columns(low)
    largest_low = np.maximum(np.maximum(a, b), c)
    a, b, c = columns(high)
    smallest_high = np.minimum(np.minimum(a, b), c)
    a, b, c = columns(median)
    return _median_of_three(largest_low, _median_of_three(a, b, c), smallest_high)


def _median_of_three(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def brain_masks(slices: np.ndarray) -> np.ndarray:
    """`brain_mask` of each slice of (N, H, W), as one array."""
    smooth = median_3x3(slices)
    low, high = np.percentile(smooth.reshape(len(smooth), -1), [1, 99], axis=1)
    return binary_fill_holes(smooth > (low + 0.1 * (high - low))[:, None, None], structure=IN_PLANE_CROSS)


def brain_interiors(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) brain masks without their outlines (`brain_interior`)."""
    return binary_erosion(masks, IN_PLANE_SQUARE, iterations=EDGE_PX)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of a 3x3-median-filtered slice above 10% of the way from its 1st to its 99th percentile,
    hole-filled (dark CSF inside the brain in). The median and the percentiles keep the threshold, and so
    the outline, where it is whatever the noise level (a noisy site must not get a wider brain)."""
    return brain_masks(np.asarray(image)[None])[0]


def brain_interior(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """`brain_mask` (or `mask`, the image's brain_mask already found) without its outline (EDGE_PX pixels): the
    partial-volume ring with the background moves with the mask's threshold (noise, blur) and would dominate the
    low quantiles and the edges."""
    mask = brain_mask(image) if mask is None else mask
    return brain_interiors(np.asarray(mask)[None])[0]


def fine_residual(image: np.ndarray) -> np.ndarray:
    """The residual to a 3x3 mean: it keeps sqrt(8/9) of white noise's sd, and little of smooth anatomy.
    A stack (N, H, W) is filtered slice by slice."""
    return image - uniform_filter(image, (1,) * (image.ndim - 2) + (3, 3), mode="nearest")


def robust_sd(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: a Gaussian's sd, unmoved by the few tissue borders among the values."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def residual_noise(image: np.ndarray, pixels: np.ndarray) -> float | None:
    """The noise estimate: robust sd of the fine residual at `pixels` (None with fewer than MIN_PIXELS)."""
    if pixels.sum() < MIN_PIXELS:
        return None
    return robust_sd(fine_residual(image)[pixels])


def edge_magnitude(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the sigma-1-smoothed slice (the smoothing keeps noise from posing as edges); a stack
    (N, H, W) slice by slice."""
    smooth = gaussian_filter(image, (0,) * (image.ndim - 2) + (1.0, 1.0), mode="nearest")
    gy, gx = np.gradient(smooth, axis=(-2, -1))
    return np.hypot(gy, gx)


def edge_strength(slices: np.ndarray) -> float:
    """Median over slices of the mean `edge_magnitude` inside the brain (off its outline): how sharp tissue borders
    are, on the slices' own intensity scale (compare only after the quantile map)."""
    values = []
    for image in np.asarray(slices, dtype=np.float64):
        inside = brain_interior(image)
        if inside.sum() >= MIN_PIXELS:
            values.append(float(edge_magnitude(image)[inside].mean()))
    return float(np.median(values)) if values else 0.0


def summaries(slices: np.ndarray) -> np.ndarray:
    """What the scanner model's fit matches, pooled over slices: brain quantiles (SUMMARY_QUANTILES), log noise
    (robust sd of the fine residual) and log edge strength, the two logs weighted by SHAPE_WEIGHT.

    Each slice is first z-scored again in its `brain_mask`, found from intensities on either side, so the summaries
    do not depend on the region the slice was z-scored in before: a labelled slice's brain, an unlabelled one's
    template brain (which takes in dark pixels around the brain and so narrows the brain's values) or a render's
    tissue fractions. Compared on the cache's scale instead, a template-masked site was fitted with too little
    tissue contrast (phantom siteB: WM 1.03 of GM for 1.24)."""
    slices = np.asarray(slices, np.float64)
    masks = brain_masks(slices)
    insides = brain_interiors(masks)
    measured = insides.sum(axis=(1, 2)) >= MIN_PIXELS
    if not measured.any():
        raise ValueError(f"none of {len(slices)} slices has {MIN_PIXELS} brain pixels to measure")
    slices, masks, insides = slices[measured], masks[measured], insides[measured]
    scaled = np.stack([(image - image[mask].mean()) / max(float(image[mask].std()), 1e-6)
                       for image, mask in zip(slices, masks, strict=True)])
    brain_values = scaled[insides]  # slice by slice, row-major within each: the order of the pooled values
    spread = robust_sd(fine_residual(scaled)[insides])
    return np.concatenate([np.quantile(brain_values, SUMMARY_QUANTILES),
                           [SHAPE_WEIGHT * np.log(max(spread, 1e-6)),
                            SHAPE_WEIGHT * np.log(max(float(edge_magnitude(scaled)[insides].mean()), 1e-6))]])
