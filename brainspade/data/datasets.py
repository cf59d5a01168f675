"""Torch datasets over the slice cache, and the protocol that decides which slices a stage may use.

The protocol (METHOD.md): generators train on the *train* split of the *source* data sets
only. Target data sets give unlabelled style images from their train split; test splits
are for evaluation only. Every training stage selects its slices through these functions,
so a leak would have to be written here, in one place. A slice without labels (label_index
-1 in the cache) is only ever a style image: what trains on labels gets labelled slices only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import background_channel
from brainspade.errors import BrainspadeError


def generator_label_indices(cache: SliceCache, source_datasets: Sequence[str]) -> np.ndarray:
    """PV slices a label generator may train on: train split of the source data sets."""
    return cache.label_indices(split="train", datasets=list(source_datasets))


def generator_image_indices(cache: SliceCache, source_datasets: Sequence[str]) -> np.ndarray:
    """Image slices the classifier and image generator may train on: train split of the source data sets."""
    indices = cache.image_indices(split="train", datasets=list(source_datasets))
    if len(cache.labelled(indices)) != len(indices):  # prepare-data refuses unlabelled source rows
        raise BrainspadeError(f"{cache.folder}: source data sets {list(source_datasets)} have unlabelled train slices; "
                              "rerun prepare-data (a source row needs its labels file)")
    return indices


def style_image_indices(cache: SliceCache, dataset: str, modality: str | None = None) -> np.ndarray:
    """Slices usable as style images: the train split only, never a test split."""
    return cache.image_indices(split="train", datasets=[dataset], modalities=None if modality is None else [modality])


def heldout_label_indices(cache: SliceCache, source_datasets: Sequence[str]) -> np.ndarray:
    """PV slices held out from the label generators: test split of the source data sets (evaluation only)."""
    return cache.label_indices(split="test", datasets=list(source_datasets))


def evaluation_image_indices(cache: SliceCache, datasets: Sequence[str], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(train-split, test-split) image slices of the data sets in one modality, for scoring generators.

    The train split is what a generator saw (as training or style images); the test split is
    the held-out reference of an evaluation and is never used by a training stage.
    """
    return (cache.image_indices(split="train", datasets=list(datasets), modalities=[modality]),
            cache.image_indices(split="test", datasets=list(datasets), modalities=[modality]))


def real_training_indices(cache: SliceCache, dataset: str, modality: str, volumes: int | None) -> np.ndarray:
    """Labelled train-split image slices of one data set and modality; only the first `volumes` subjects if given.

    The first k labelled subjects (sorted by name) are the only ones whose labels a few-volume
    arm (R_n-ood, R_f-ood) may see; unlabelled volumes (style images only) are never chosen.
    """
    indices = cache.labelled(cache.image_indices(split="train", datasets=[dataset], modalities=[modality]))
    if indices.size == 0:
        raise BrainspadeError(f"{cache.folder}: no labelled train slices of data set {dataset!r} with modality "
                              f"{modality!r}; a reference arm trains on labels: give some of its train rows labels")
    subjects = sorted(set(cache.image_table["subject"][indices].tolist()))
    if volumes is not None:
        if not 0 < volumes <= len(subjects):
            raise BrainspadeError(f"{dataset} has {len(subjects)} labelled train volumes of {modality}; "
                                  f"volumes={volumes} must be between 1 and {len(subjects)}")
        subjects = subjects[:volumes]
        indices = indices[np.isin(cache.image_table["subject"][indices], subjects)]
    return indices


class ImageSlices(Dataset):
    """Images with their PV map and categorical labels.

    Items: {'image': (1,H,W), 'pv_map': (C,H,W), 'modality': int, 'dataset': int, 'index': int}
    where modality/dataset are positions in the given name lists (-1 if not listed). An unlabelled
    slice's pv_map knows its brain only (`brain_only_pv_map`): enough for what reads the brain
    (the classifiers' intensity augmentation), never a training label (`generator_image_indices`).
    """

    def __init__(self, cache: SliceCache, indices: np.ndarray, modalities: Sequence[str], datasets: Sequence[str]):
        self.cache = cache
        self.indices = np.asarray(indices)
        self.modalities = list(modalities)
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        index = int(self.indices[item])
        table = self.cache.image_table
        modality, dataset = str(table["modality"][index]), str(table["dataset"][index])
        label_index = int(table["label_index"][index])
        pv_map = self.cache.pv_map(label_index) if label_index >= 0 else brain_only_pv_map(self.cache, index)
        return {
            "image": torch.from_numpy(self.cache.image(index))[None],
            "pv_map": torch.from_numpy(pv_map),
            "modality": self.modalities.index(modality) if modality in self.modalities else -1,
            "dataset": self.datasets.index(dataset) if dataset in self.datasets else -1,
            "index": index,
        }


def brain_only_pv_map(cache: SliceCache, index: int) -> np.ndarray:
    """(C, H, W) for an unlabelled image slice: background outside the brain it was z-scored in, the tissue channels
    sharing the brain evenly (no tissue is known)."""
    brain = cache.brain(index)
    background = background_channel(cache.channels)
    pv = np.repeat((brain / max(len(cache.channels) - 1, 1))[None], len(cache.channels), axis=0).astype(np.float32)
    pv[background] = ~brain
    return pv
