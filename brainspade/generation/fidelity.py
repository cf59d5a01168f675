"""How close generated slices and label maps are to real ones, with MONAI's metrics.

`paired_fidelity` scores an image generator on (generated, real) pairs of the same PV map;
`label_dice` scores a label model's PV maps against real ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric, compute_confusion_matrix_metric, get_confusion_matrix
from monai.networks.utils import one_hot

WINDOW = 11  # SSIM's Gaussian window (Wang et al. 2004): 11 pixels, sigma 1.5
SIGMA = 1.5


def paired_fidelity(fake: torch.Tensor, real: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image SSIM over the slice, PSNR and MAE inside the brain, for (B, 1, H, W) batches.

    Every score uses each real image's own data range (max - min). SSIM is MONAI's with an
    11-pixel Gaussian window (sigma 1.5), averaged over every pixel of the slice: the images are
    zero-padded by half a window (MONAI's window only visits full positions) and divided by their
    data range (SSIM is unchanged when both images and the range are scaled alike; MONAI takes one
    range per batch). PSNR and MAE are written here because MONAI's PSNRMetric and MAEMetric
    average over the whole image and take no mask.

    Returns {"ssim", "psnr", "mae_brain"}, each (B,).
    """
    data_range = (real.amax(dim=(1, 2, 3)) - real.amin(dim=(1, 2, 3))).clamp_min(1e-6)
    scale = data_range.view(-1, 1, 1, 1)
    pad = [WINDOW // 2] * 4
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=WINDOW, kernel_sigma=SIGMA, reduction="none")
    brain_pixels = brain.sum(dim=(1, 2, 3)).clamp_min(1)
    mse = ((fake - real) ** 2 * brain).sum(dim=(1, 2, 3)) / brain_pixels
    return {
        "ssim": ssim(F.pad(fake / scale, pad), F.pad(real / scale, pad)).view(-1),
        "psnr": 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12)),
        "mae_brain": ((fake - real).abs() * brain).sum(dim=(1, 2, 3)) / brain_pixels,
    }


def label_dice(predicted_pv: torch.Tensor, real_pv: torch.Tensor, channels: Sequence[str]) -> dict[str, float | None]:
    """Dice of the argmax labels per channel, pooled over all slices (None where a channel is absent in both).

    (N, C, H, W) PV maps. MONAI's F1 score (= Dice, undefined where neither map has the channel)
    of the confusion counts summed over slices; MONAI counts per slice in float32, the sum is in
    float64 so that the pooled counts stay exact.
    """
    num_channels = len(channels)
    predicted = one_hot(predicted_pv.argmax(dim=1, keepdim=True), num_channels, dtype=torch.float32)
    real = one_hot(real_pv.argmax(dim=1, keepdim=True), num_channels, dtype=torch.float32)
    counts = get_confusion_matrix(predicted, real).double().sum(dim=0)
    scores = compute_confusion_matrix_metric("f1 score", counts).tolist()
    return {name: None if score != score else score for name, score in zip(channels, scores, strict=True)}
