"""One random scanner appearance applied to a (target, style) training pair alike.

The generator trains on ~3 appearances (siteA T1, siteT T1 and FLAIR), too few to learn how the
style's appearance statistics map to an image for a scanner it has never seen. Both slices of a
pair come from one volume, so giving them the *same* random intensity curve, bias field, gamma,
blur and noise keeps them "one site" while widening the appearances the generator learns from.
The pair travels as the two channels of one TorchIO image: TorchIO 1.2 draws the parameters of
its intensity transforms per image of a subject, but applies bias field, blur and noise level to all
channels of one image alike (its RandomGamma draws per channel, so gamma is drawn here).
"""

from __future__ import annotations

import torch
import torchio as tio

from brainspade.settings import AppearanceAugmentation


def _to_unit_range(images: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """z-scored slices -> the background at 0, the brain's 99th percentile at 1 (TorchIO's gamma needs non-negative values)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    shifted = images - low
    high = torch.stack([torch.quantile(s[m > 0], 0.99) if (m > 0).sum() > 1 else s.max()
                        for s, m in zip(shifted, brain, strict=True)])
    return shifted / high.clamp_min(1e-6)[:, None, None, None]


def _random_monotone_curve(values: torch.Tensor, strength: float) -> torch.Tensor:
    """A random increasing piecewise-linear map of [0, 1] onto itself (4 segments), the same for every value.

    Written here because no TorchIO / MONAI transform draws a random monotone curve: it moves tissue
    levels relative to each other (e.g. GM/WM contrast), which gamma alone cannot.
    """
    steps = torch.exp((torch.rand(4) * 2 - 1) * strength)
    levels = torch.cat([torch.zeros(1), torch.cumsum(steps, 0) / steps.sum()])
    clipped = values.clamp(0, 1)
    segment = torch.clamp((clipped * 4).long(), max=3)
    fraction = clipped * 4 - segment
    mapped = levels[segment] + fraction * (levels[segment + 1] - levels[segment])
    return mapped + (values - clipped)  # above 1 (bright outliers) keeps its excess


def _zscore(images: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    count = brain.sum(dim=(1, 2, 3), keepdim=True).clamp_min(2)
    mean = (images * brain).sum(dim=(1, 2, 3), keepdim=True) / count
    std = (((images - mean) ** 2 * brain).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt().clamp_min(1e-6)
    return (images - mean) / std


def augment_pairs(targets: torch.Tensor, styles: torch.Tensor, target_brain: torch.Tensor,
                  style_brain: torch.Tensor, settings: AppearanceAugmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scored (B,1,H,W) targets and styles -> both with one random appearance per pair, z-scored in the brain again.

    Each pair is changed with probability `settings.probability`; the others are returned as they were.
    Draws come from torch's RNG (restored on resume).
    """
    transform = tio.Compose([
        tio.RandomBiasField(coefficients=settings.bias_field, order=3),
        tio.RandomBlur(std=(*settings.blur_std, *settings.blur_std, 0, 0)),
        tio.RandomNoise(std=tuple(settings.noise_std)),
    ])
    low_gamma, high_gamma = settings.log_gamma
    raw_targets, raw_styles = _to_unit_range(targets, target_brain), _to_unit_range(styles, style_brain)
    out_targets, out_styles = targets.clone(), styles.clone()
    for i in range(len(targets)):
        if torch.rand(()) >= settings.probability:
            continue
        pair = torch.cat([raw_targets[i], raw_styles[i]])  # (2, H, W): one curve, one gamma for both
        gamma = torch.exp(low_gamma + torch.rand(()) * (high_gamma - low_gamma))
        pair = _random_monotone_curve(pair, settings.curve).clamp_min(0) ** gamma
        changed = transform(tio.ScalarImage(tensor=pair[..., None])).data[..., 0]
        out_targets[i], out_styles[i] = changed[0:1], changed[1:2]
    changed_mask = (out_targets != targets).flatten(1).any(dim=1)[:, None, None, None]
    out_targets = torch.where(changed_mask, _zscore(out_targets, target_brain), targets)
    out_styles = torch.where(changed_mask, _zscore(out_styles, style_brain), styles)
    return out_targets, out_styles
