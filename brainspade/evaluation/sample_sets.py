"""A finished sample set (W/samples/<name>) in memory, and the real slices it is scored against.

PROTOCOL (METHOD.md, `data.datasets`): the generators trained on the train split of the source data
sets; the style images came from the train split of the style data set. Realism, diversity and
label realism compare with the *test* split (held out from every training stage; used here only to
evaluate), and put a real-vs-real floor beside each score: train-split slices scored against the
same test slices. Memorisation measures distances to the train split (what the generators saw)
and uses the test split as the reference of a new slice.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from brainspade.data.datasets import evaluation_image_indices, generator_label_indices, heldout_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.segmentation.raw_dataset import image_path, label_path, read_case


@dataclass(frozen=True)
class SampleSet:
    """The first samples of a sample set: images (N, H, W), PV maps (N, C, H, W) and how they were made."""

    name: str
    style_dataset: str | None
    style_modality: str
    conditions: str
    case_ids: list[str]
    images: np.ndarray
    pv_maps: np.ndarray
    slice_positions: np.ndarray
    with_lesion: np.ndarray  # (N,) bool: the sample was conditioned on a lesion

    @property
    def labels(self) -> np.ndarray:
        return self.pv_maps.argmax(axis=1)


def missing_files(folder: Path) -> list[Path]:
    """Files of the cases samples.csv lists (image, labels, PV map) that are not in the sample set's folder.

    The manifest lists folders, so a deleted case leaves the set's fingerprint as it was: checked here instead.
    """
    with (folder / "samples.csv").open(newline="") as handle:
        cases = [f"syn_{int(row['id']):06d}" for row in csv.DictReader(handle)]
    return [path for case in cases for path in (image_path(folder, case), label_path(folder, case),
                                                folder / "pv" / f"{case}.npy") if not path.is_file()]


def load_sample_set(folder: Path, max_samples: int) -> SampleSet:
    """The first `max_samples` pairs (by id) of a finished `brainspade sample` folder."""
    settings = yaml.safe_load((folder / "settings.yaml").read_text())
    with (folder / "samples.csv").open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["id"]))[:max_samples]
    if len(rows) < 2:
        raise BrainspadeError(f"{folder}: {len(rows)} sample(s); scoring a set needs at least 2")
    case_ids = [f"syn_{int(row['id']):06d}" for row in rows]
    images = np.stack([read_case(folder, case)[0] for case in case_ids])
    pv_maps = np.stack([np.load(folder / "pv" / f"{case}.npy").astype(np.float32) for case in case_ids])
    lesion_columns = [key for key in rows[0] if key.startswith("lesion_")]
    return SampleSet(
        name=folder.name,
        style_dataset=None if settings.get("style_folder") else settings.get("style_dataset"),
        style_modality=str(settings["style_modality"]),
        conditions=str(settings.get("conditions", "")),
        case_ids=case_ids,
        images=images,
        pv_maps=pv_maps / pv_maps.sum(axis=1, keepdims=True),
        slice_positions=np.array([float(row["slice_position"]) for row in rows]),
        with_lesion=np.array([any(float(row[c]) > 0 for c in lesion_columns) for row in rows], dtype=bool),
    )


@dataclass(frozen=True)
class References:
    """Slice-cache indices of the real slices a sample set is compared with."""

    image_heldout: np.ndarray  # test-split images of the style data set and modality, matched to the samples
    image_real: np.ndarray  # train-split images of the same (the real-vs-real floor)
    image_training: np.ndarray  # every train-split image of the sources and the style data set in that modality
    image_training_heldout: np.ndarray  # test-split images of the same data sets, matched in position (memorisation)
    label_heldout: np.ndarray  # test-split PV maps of the sources, matched to the samples
    label_memorisation_heldout: np.ndarray  # the same matched in position only (memorisation reference)
    label_real: np.ndarray  # train-split PV maps of the sources, matched (the floor)
    label_training: np.ndarray  # every PV map the label generators trained on


def references(cache: SliceCache, samples: SampleSet, sources: list[str], max_real: int, seed: int) -> References:
    """The real slices of each comparison, matched to the samples' slice positions and lesion conditions.

    Matching keeps the scores about the generators, not about which slices were asked for: samples
    drawn between slice positions 0.2 and 0.8 without lesions are compared with real slices of that
    range without lesions. Memorisation references are matched in position only: a sample asked for a
    lesion may come without one, and must then not look memorised next to held-out slices that all have
    one (the threshold is a minimum: a wider reference only lowers it, so the flag gets more cautious).
    Sets larger than `max_real` are cut to a seeded random subset.
    """
    rng = np.random.default_rng(seed)
    low, high = samples.slice_positions.min(), samples.slice_positions.max()
    lesion_share = cache_lesion_share(cache)

    def matched_labels(indices: np.ndarray, lesions: bool = True) -> np.ndarray:
        position = cache.label_table["slice_position"][indices]
        keep = (position >= low) & (position <= high)
        if lesions and not samples.with_lesion.any():
            keep &= lesion_share[indices] == 0
        elif lesions and samples.with_lesion.all():
            keep &= lesion_share[indices] > 0
        return indices[keep]

    def matched_images(indices: np.ndarray, lesions: bool = True) -> np.ndarray:
        label_index = cache.image_table["label_index"][indices]
        labelled = label_index >= 0
        keep = labelled & np.isin(label_index, matched_labels(label_index[labelled], lesions))
        # An unlabelled slice (label_index -1, a style image) is matched in position only: its lesions are unknown.
        position = cache.image_table["slice_position"][indices]
        return indices[keep | (~labelled & (position >= low) & (position <= high))]

    def cut(indices: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(indices, max_real, replace=False)) if len(indices) > max_real else indices

    empty = np.zeros(0, dtype=np.int64)
    image_real = image_heldout = empty
    if samples.style_dataset is not None:
        train, test = evaluation_image_indices(cache, [samples.style_dataset], samples.style_modality)
        image_real, image_heldout = cut(matched_images(train)), cut(matched_images(test))
    seen = sorted({*sources, *([samples.style_dataset] if samples.style_dataset else [])})
    image_training, image_training_heldout = evaluation_image_indices(cache, seen, samples.style_modality)
    label_training = generator_label_indices(cache, sources)
    return References(
        image_heldout=image_heldout,
        image_real=image_real,
        image_training=image_training,
        image_training_heldout=cut(matched_images(image_training_heldout, lesions=False)),
        label_heldout=cut(matched_labels(heldout_label_indices(cache, sources))),
        label_memorisation_heldout=cut(matched_labels(heldout_label_indices(cache, sources), lesions=False)),
        label_real=cut(matched_labels(label_training)),
        label_training=label_training,
    )


def cache_lesion_share(cache: SliceCache) -> np.ndarray:
    """Per PV slice, the summed lesion proportions (0 without a lesion, or without lesion channels)."""
    count = len(cache.label_table["slice_position"])
    return sum((cache.label_table[c] for c in cache.lesion_columns), np.zeros(count))


def real_images(cache: SliceCache, indices: np.ndarray) -> np.ndarray:
    return np.stack([cache.image(int(i)) for i in indices]) if len(indices) else np.zeros((0, *cache.size), np.float32)


def real_pv_maps(cache: SliceCache, label_indices: np.ndarray) -> np.ndarray:
    return np.stack([cache.pv_map(int(i)) for i in label_indices]) if len(label_indices) \
        else np.zeros((0, len(cache.channels), *cache.size), np.float32)


def image_pv_maps(cache: SliceCache, image_indices: np.ndarray) -> np.ndarray:
    """The PV maps of image slices."""
    return real_pv_maps(cache, cache.image_table["label_index"][image_indices])
