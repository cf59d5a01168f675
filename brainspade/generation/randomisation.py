"""Domain randomisation (SynthSeg, Billot et al., MedIA 2023): an image from a label map alone.

Per image, every channel of the PV map gets a random Gaussian intensity (mean and sd drawn
anew), mixed by the partial volumes; then a random smooth bias field, blur, in-plane
anisotropy (a thick-slice acquisition), gamma and noise. All of it is TorchIO's
(`RandomLabelsToImage` and friends). No real image is used, so no contrast is privileged:
the baseline a learnt image generator has to beat on the same label maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio

from brainspade.data.slicing import zscore_in_brain
from brainspade.settings import RandomisationSettings


def randomiser(settings: RandomisationSettings) -> tio.Compose:
    """The TorchIO transform turning a subject's `pv` LabelMap (C, H, W, 1) into its `image` (1, H, W, 1)."""
    return tio.Compose([
        tio.RandomLabelsToImage(label_key="pv", image_key="image", default_mean=tuple(settings.tissue_mean),
                                default_std=tuple(settings.tissue_std)),
        tio.RandomBiasField(coefficients=settings.bias_field, order=3),
        tio.RandomBlur(std=tuple(settings.blur_std)),
        tio.RandomAnisotropy(axes=(0, 1), downsampling=tuple(settings.anisotropy)),
        tio.RandomGamma(log_gamma=tuple(settings.log_gamma)),
        tio.RandomNoise(std=tuple(settings.noise_std)),
    ])


def randomised_images(pv_maps: np.ndarray, seeds: Sequence[int], settings: RandomisationSettings,
                      background: int = 0) -> np.ndarray:
    """PV maps (B, C, H, W) -> images (B, H, W) float32, z-scored inside the brain as the real slices are.

    Image i depends only on (pv_maps[i], seeds[i], settings): TorchIO draws from torch's global
    generator, which is seeded per image.
    """
    if len(seeds) != len(pv_maps):
        raise ValueError(f"{len(pv_maps)} PV maps but {len(seeds)} seeds")
    transform = randomiser(settings)
    images = []
    for pv, seed in zip(np.asarray(pv_maps, dtype=np.float32), seeds, strict=True):
        torch.manual_seed(int(seed))
        subject = tio.Subject(pv=tio.LabelMap(tensor=torch.from_numpy(pv)[..., None]))
        image = transform(subject)["image"].data[0, :, :, 0].numpy()
        images.append(zscore_in_brain(image, pv[background] < 0.5).astype(np.float32))
    return np.stack(images)


RANDOMISED_IMAGE = 4  # derived-seed purpose of a randomised image (generation.labels numbers the others)
