"""The 2D slice cache every training stage reads: written once by prepare-data, memory-mapped after.

Folder layout (W/slices):
  images.npy   (N, H, W) float16   per-slice z-scored intensities
  brain_masks.npy  (N, H, ceil(W/8)) uint8  the brain each image slice was z-scored in (np.packbits on W)
  pv_maps.npy  (M, C, H, W) float16  PV maps, one per distinct (labels file, slice)
  images.csv   one row per image slice: label_index, subject, dataset, modality, split, slice_index, ...
  labels.csv   one row per PV slice: subject, dataset, split, slice_index, slice_position, lesion_<name>, ...
  schema.json  channels, lesion channels, slice size
  manifest.json  written last (the cache is complete)

`label_index` is the image slice's row of pv_maps.npy / labels.csv, or UNLABELLED (-1) for a slice of a
volume without labels (a style image only: its brain came from the template or its own intensities).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainspade.data.slicing import background_channel
from brainspade.engine.stage import MANIFEST_NAME
from brainspade.errors import BrainspadeError

IMAGE_COLUMNS = ("label_index", "subject", "dataset", "modality", "split", "slice_index", "slice_position", "image_file")
LABEL_COLUMNS = ("subject", "dataset", "split", "slice_index", "slice_position", "brain_fraction", "labels_file")
UNLABELLED = -1  # label_index of an image slice without a PV map


def write_table(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A CSV as columns of numpy arrays (numeric where every value parses)."""
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    if not records:
        return {}
    columns = {}
    for name in records[0]:
        values = [r[name] for r in records]
        try:
            columns[name] = np.array([float(v) for v in values])
            if name.endswith("index"):
                columns[name] = columns[name].astype(np.int64)
        except ValueError:
            columns[name] = np.array(values)
    return columns


@dataclass
class SliceCache:
    """Read access to a finished slice cache (arrays are memory-mapped, not loaded)."""

    folder: Path
    channels: list[str]
    lesion_channels: list[str]
    size: tuple[int, int]
    images: np.ndarray
    pv_maps: np.ndarray
    image_table: dict[str, np.ndarray]
    label_table: dict[str, np.ndarray]
    brain_masks: np.ndarray | None  # None in a cache made before the masks were stored (every slice labelled)

    @classmethod
    def open(cls, folder: str | Path) -> SliceCache:
        folder = Path(folder)
        if not (folder / MANIFEST_NAME).is_file():
            raise BrainspadeError(f"{folder}: no finished slice cache; run `brainspade prepare-data` with this workdir")
        schema = json.loads((folder / "schema.json").read_text())
        return cls(
            folder=folder,
            channels=list(schema["channels"]),
            lesion_channels=list(schema["lesion_channels"]),
            size=tuple(schema["size"]),
            images=np.load(folder / "images.npy", mmap_mode="r"),
            pv_maps=np.load(folder / "pv_maps.npy", mmap_mode="r"),
            image_table=read_table(folder / "images.csv"),
            label_table=read_table(folder / "labels.csv"),
            brain_masks=np.load(folder / "brain_masks.npy", mmap_mode="r") if (folder / "brain_masks.npy").is_file()
            else None,
        )

    @property
    def lesion_columns(self) -> list[str]:
        return [f"lesion_{name}" for name in self.lesion_channels]

    def image_indices(
        self,
        *,
        split: str | None = None,
        datasets: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Indices of image slices matching every given filter."""
        return _select(self.image_table, split=split, dataset=datasets, modality=modalities, subject=subjects)

    def label_indices(
        self, *, split: str | None = None, datasets: Sequence[str] | None = None, subjects: Sequence[str] | None = None
    ) -> np.ndarray:
        """Indices of PV slices matching every given filter."""
        return _select(self.label_table, split=split, dataset=datasets, subject=subjects)

    def labelled(self, indices: np.ndarray) -> np.ndarray:
        """The image slices of `indices` that have a PV map (label_index != UNLABELLED)."""
        indices = np.asarray(indices, dtype=np.int64)
        return indices[self.image_table["label_index"][indices] != UNLABELLED]

    def image(self, index: int) -> np.ndarray:
        """Image slice (H, W) float32."""
        return np.asarray(self.images[index], dtype=np.float32)

    def brain(self, index: int) -> np.ndarray:
        """The brain mask (H, W) bool that image slice `index` was z-scored in."""
        if self.brain_masks is None:  # an older cache: every slice is labelled and z-scored in its PV map's brain
            return self.pv_map(int(self.image_table["label_index"][index]))[background_channel(self.channels)] < 0.5
        return np.unpackbits(self.brain_masks[index], axis=-1, count=self.size[1]).astype(bool)

    def pv_map(self, label_index: int) -> np.ndarray:
        """PV map (C, H, W) float32, renormalised after float16 storage so channels sum to 1."""
        if label_index < 0:  # numpy would silently read the last map
            raise BrainspadeError(f"{self.folder}: an unlabelled image slice has no PV map (label_index {label_index})")
        pv = np.asarray(self.pv_maps[label_index], dtype=np.float32)
        return pv / pv.sum(axis=0, keepdims=True)

    def lesion_proportions(self, label_index: int) -> np.ndarray:
        """Per lesion channel, the share of brain pixels that channel covers in this slice."""
        return np.array([self.label_table[c][label_index] for c in self.lesion_columns], dtype=np.float32)


def _select(table: dict[str, np.ndarray], **filters) -> np.ndarray:
    if not table:
        return np.zeros(0, dtype=np.int64)
    keep = np.ones(len(next(iter(table.values()))), dtype=bool)
    for column, wanted in filters.items():
        if wanted is None:
            continue
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        keep &= np.isin(table[column], wanted)
    return np.flatnonzero(keep)
