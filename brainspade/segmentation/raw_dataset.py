"""nnU-Net v2 raw data sets of 2D slices: the on-disk contract shared by real exports and `sample`.

Layout (nnU-Net's own): `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`, `dataset.json`.
Each file is a true 2D NIfTI written with SimpleITK and read back by nnU-Net's `SimpleITKIO`,
which turns a 2D image into (1, 1, H, W) with spacing (999, 1, 1): nnU-Net then plans a 2D
network and never resamples across slices. Every slice gets the same 1 x 1 pixel spacing
because real and synthetic slices share one grid (the slice cache's), and a mixed data set
must not be resampled to a median of different spacings.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_path, write_json_atomic
from brainspade.errors import BrainspadeError

FILE_ENDING = ".nii.gz"
READER_WRITER = "SimpleITKIO"  # nnU-Net's reader that handles true 2D files
CHANNEL_SUFFIX = "_0000"  # one input channel per case
PARTIAL = ".partial"  # temporary files live here, outside the folders nnU-Net lists


def image_path(raw_dir: str | Path, case_id: str) -> Path:
    return Path(raw_dir) / "imagesTr" / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"


def label_path(raw_dir: str | Path, case_id: str) -> Path:
    return Path(raw_dir) / "labelsTr" / f"{case_id}{FILE_ENDING}"


def labels_from_pv(pv_maps: np.ndarray) -> np.ndarray:
    """Hard labels (argmax over channels) of PV maps (C, H, W) or (B, C, H, W) as uint8 label ids."""
    pv_maps = np.asarray(pv_maps)
    if pv_maps.ndim not in (3, 4):
        raise ValueError(f"PV maps must be (C, H, W) or (B, C, H, W), got shape {pv_maps.shape}")
    if pv_maps.shape[-3] > 256:
        raise ValueError(f"{pv_maps.shape[-3]} channels do not fit uint8 label ids")
    return np.argmax(pv_maps, axis=-3).astype(np.uint8)


def write_case(raw_dir: str | Path, case_id: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write one (image, label) case; each file appears complete or not at all.

    The label is written before the image: nnU-Net discovers cases by their image, so a case
    interrupted between the two files is invisible rather than an image without a label.
    """
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label)
    if image.ndim != 2 or image.shape != label.shape:
        raise ValueError(f"case {case_id}: image {image.shape} and label {label.shape} must be the same (H, W)")
    if not np.isfinite(image).all():
        raise ValueError(f"case {case_id}: image has non-finite values")
    _write_2d(label.astype(np.uint8), label_path(raw_dir, case_id))
    _write_2d(image, image_path(raw_dir, case_id))


def write_dataset_json(raw_dir: str | Path, channels: Sequence[str], modality_name: str, num_training: int) -> None:
    """dataset.json: one input channel named after the modality; label ids = positions in `channels`.

    `channels` is the PV schema (background first), so label id k is PV channel k.
    """
    if not channels or channels[0] != "background":
        raise ValueError(f"the first label channel must be 'background' (nnU-Net's label 0), got {list(channels)}")
    write_json_atomic(
        Path(raw_dir) / "dataset.json",
        {
            "channel_names": {"0": str(modality_name)},
            "labels": {name: index for index, name in enumerate(channels)},
            "numTraining": int(num_training),
            "file_ending": FILE_ENDING,
            "overwrite_image_reader_writer": READER_WRITER,
        },
    )


def case_ids(raw_dir: str | Path) -> list[str]:
    """The cases of a raw data set (those with an image file), sorted."""
    suffix = f"{CHANNEL_SUFFIX}{FILE_ENDING}"
    folder = Path(raw_dir) / "imagesTr"
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def read_case(raw_dir: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W) float32, label (H, W) uint8) of one case."""
    return read_2d(image_path(raw_dir, case_id)).astype(np.float32), read_2d(label_path(raw_dir, case_id)).astype(
        np.uint8
    )


def read_2d(path: str | Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def real_case_id(subject: str, modality: str, slice_index: int) -> str:
    return f"{subject}_{modality}_{int(slice_index):04d}"


def export_real_slices(
    cache: SliceCache, image_indices: Sequence[int], raw_dir: str | Path, channels: Sequence[str]
) -> list[str]:
    """Write real image slices with the argmax of their PV maps as a raw data set; return the case ids.

    `cases.csv` records where each case came from (cache index, subject, slice), so a model's
    training data can be traced back to volumes.
    """
    indices = [int(i) for i in image_indices]
    if not indices:
        raise BrainspadeError(f"{raw_dir}: no slices selected to export; check the data set and modality names")
    table = cache.image_table
    modalities = sorted({str(table["modality"][i]) for i in indices})
    if len(modalities) != 1:
        raise BrainspadeError(f"{raw_dir}: one modality per nnU-Net data set, got {modalities}")
    if list(channels) != list(cache.channels):
        raise BrainspadeError(f"{raw_dir}: label channels {list(channels)} differ from the cache's {cache.channels}")
    if len(cache.labelled(indices)) != len(indices):
        raise BrainspadeError(f"{raw_dir}: some selected slices have no labels; a real arm trains on labelled slices")
    rows = []
    for index in indices:
        subject, slice_index = str(table["subject"][index]), int(table["slice_index"][index])
        case = real_case_id(subject, modalities[0], slice_index)
        label = labels_from_pv(cache.pv_map(int(table["label_index"][index])))
        write_case(raw_dir, case, cache.image(index), label)
        rows.append({"case": case, "image_index": index, "subject": subject, "dataset": str(table["dataset"][index]),
                     "split": str(table["split"][index]), "slice_index": slice_index})
    with (Path(raw_dir) / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_dataset_json(raw_dir, channels, modalities[0], len(rows))
    return [row["case"] for row in rows]


def _write_2d(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0))
    # The temporary file stays out of imagesTr/labelsTr: nnU-Net takes every file there for a case.
    with atomic_path(path, temp_dir=path.parent.parent / PARTIAL) as tmp:
        sitk.WriteImage(image, str(tmp), True)
