"""Style images for synthesis: slices of a data set in the workdir, or of an unlabelled NIfTI folder.

Style slices come from train splits only (the cache) or from a folder the user names (unpaired
target images, the near/far out-of-distribution use case); test splits are never style sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainspade.data.datasets import style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import brain_slice_indices, crop_or_pad, zscore_in_brain
from brainspade.data.volumes import load_image
from brainspade.errors import BrainspadeError


@dataclass
class StyleBank:
    """A pool of z-scored style slices of one modality, each with a description of where it came from."""

    modality: str
    dataset: str | None  # the source data set's name when it is one of the workdir's data sets
    slices: Sequence[np.ndarray] | np.ndarray  # (S, H, W) or a lazy sequence of (H, W)
    origins: list[str]

    def __len__(self) -> int:
        return len(self.origins)

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.origins)))

    def image(self, index: int) -> np.ndarray:
        return np.asarray(self.slices[index], dtype=np.float32)


class _CacheSlices:
    """Lazy (H, W) slices of the slice cache, so a bank over a large cache costs no memory."""

    def __init__(self, cache: SliceCache, indices: np.ndarray):
        self.cache, self.indices = cache, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> np.ndarray:
        return self.cache.image(int(self.indices[item]))


def style_bank_from_cache(cache: SliceCache, dataset: str, modality: str) -> StyleBank:
    """Train-split slices of one data set and modality of the workdir's slice cache."""
    indices = style_image_indices(cache, dataset, modality)
    if len(indices) == 0:
        available = sorted({f"{d}/{m}" for d, m in zip(cache.image_table["dataset"], cache.image_table["modality"], strict=True)})
        raise BrainspadeError(
            f"{cache.folder}: no train slices of style.dataset={dataset} style.modality={modality}; "
            f"choose one of {', '.join(available)}"
        )
    table = cache.image_table
    origins = [f"{table['image_file'][i]}:{int(table['slice_index'][i])}" for i in indices]
    return StyleBank(modality=modality, dataset=dataset, slices=_CacheSlices(cache, indices), origins=origins)


def style_bank_from_folder(
    folder: Path, modality: str, size: Sequence[int], min_foreground_fraction: float = 0.05
) -> StyleBank:
    """Axial slices of every NIfTI volume in `folder` (no labels needed), z-scored inside the head.

    Without labels, the foreground is estimated from intensity (above 10% of the volume's
    99th percentile), which matches the brain mask for skull-stripped images.
    """
    paths = sorted(p for p in folder.rglob("*") if p.name.endswith((".nii", ".nii.gz")))
    if not paths:
        raise BrainspadeError(f"{folder}: no .nii or .nii.gz files; point style.folder at a folder of NIfTI volumes")
    slices, origins = [], []
    for path in paths:
        volume, _ = load_image(path)
        foreground = volume > 0.1 * np.percentile(volume, 99)
        for z in brain_slice_indices(foreground, min_foreground_fraction, every=1):
            image = crop_or_pad(volume[:, :, z], size, fill=float(volume.min()))
            mask = crop_or_pad(foreground[:, :, z], size, fill=False)
            slices.append(zscore_in_brain(image, mask).astype(np.float32))
            origins.append(f"{path.relative_to(folder)}:{int(z)}")
    if not slices:
        raise BrainspadeError(f"{folder}: no slice with enough foreground in any volume; check the images")
    return StyleBank(modality=modality, dataset=None, slices=np.stack(slices), origins=origins)
