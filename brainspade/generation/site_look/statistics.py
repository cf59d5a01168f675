"""Appearance statistics of a style slice: what a site looks like, measured from the image alone.

The learnt style code does not separate sites at CPU length (benchmarks/image_generator.md), and
the classifier's modality carries only T1 vs FLAIR. These few numbers carry the rest of a site's
appearance (contrast levels, noise, blur, bias) and are fed to the generator next to the code
(`image_generator.style_appearance_input`). Style images are unlabelled, so everything is computed
from intensities: the foreground is estimated as in `style_bank_from_folder` (above 10% of the way
from the minimum to the 99th percentile), which matches the brain of skull-stripped z-scored slices.
Not measure.py's mask and noise rules: these run batched in torch on the generator's device, and a
trained generator reads these exact numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Intensity quantiles inside the foreground (after re-standardising it): the histogram's shape,
# i.e. where each tissue's level sits. Then log noise, log sharpness and log low-frequency spread.
QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
STATISTICS = (*(f"q{round(q * 100):02d}" for q in QUANTILES), "log_noise", "log_sharpness", "log_bias")


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) -> bool mask of pixels above 10% of the way from each image's minimum to its 99th percentile."""
    flat = images.flatten(1)
    low = flat.amin(dim=1)
    high = torch.quantile(flat, 0.99, dim=1)
    threshold = low + 0.1 * (high - low)
    return images > threshold[:, None, None, None]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,1,H,W) slices (edges replicated)."""
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


@torch.no_grad()
def appearance_statistics(images: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) slices -> (B, len(STATISTICS)) appearance statistics, each image on its own.

    - intensity quantiles of the foreground, standardised to mean 0 / sd 1 inside it;
    - log noise: robust sd (1.4826 MAD) of the residual to a 3x3 mean, inside the eroded foreground;
    - log sharpness: gradient energy (mean squared gradient; a blur lowers it, unlike the mean gradient
      magnitude of an edge) after a sigma-1 blur (less noise-driven), inside the eroded foreground;
    - log bias: sd of a sigma-8 blur inside the foreground (slow intensity drift; anatomy adds a floor).
    All scale-free (in units of the foreground sd), so a brighter copy of a slice gets the same numbers.
    """
    images = images.float()
    mask = foreground_mask(images)
    eroded = -F.max_pool2d(-mask.float(), 9, stride=1, padding=4) > 0.5  # 4 pixels off the outline
    rows = []
    for image, inside, core in zip(images, mask, eroded, strict=True):
        values = image[inside]
        if values.numel() < 16:  # an empty slice: neutral statistics rather than NaNs
            rows.append(torch.zeros(len(STATISTICS), device=images.device))
            continue
        mean, std = values.mean(), values.std().clamp_min(1e-6)
        standard = (image - mean) / std
        quantiles = torch.quantile(standard[inside], torch.tensor(QUANTILES, device=images.device))
        residual = (standard - F.avg_pool2d(standard[None], 3, stride=1, padding=1, count_include_pad=False)[0])
        core_values = residual[core] if core.sum() >= 16 else residual[inside]
        noise = 1.4826 * (core_values - core_values.median()).abs().median()
        smooth = gaussian_blur(standard[None], 1.0)[0]
        gradient = (smooth[:, 1:, :-1] - smooth[:, :-1, :-1]) ** 2 + (smooth[:, :-1, 1:] - smooth[:, :-1, :-1]) ** 2
        # Inside the eroded foreground: the brain's outline would dominate (and a blur widens it).
        edges = core[:, :-1, :-1] if core.sum() >= 16 else inside[:, :-1, :-1]
        sharpness = gradient[edges].mean()
        low = gaussian_blur(standard[None], 8.0)[0][inside]
        rows.append(torch.cat([quantiles, torch.stack([noise, sharpness, low.std()]).clamp_min(1e-4).log()]))
    return torch.stack(rows)
