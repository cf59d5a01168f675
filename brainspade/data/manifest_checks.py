"""Checks of a whole manifest that no single row can fail: duplicates, split leaks, roles, grids.

They run before any volume is read into the cache, so a data set that would corrupt every
result later (a subject in train and test, a slice counted twice) or crash a later stage (a
source without a test split) is refused in one line at `prepare-data`, not hours later.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from brainspade.data.manifest import VolumeRow
from brainspade.errors import BrainspadeError


def check_manifest(rows: Sequence[VolumeRow], manifest: Path, sources: Sequence[str], targets: Sequence[str],
                   *, one_voxel_size: bool = True) -> None:
    """Refuse, naming the lines: duplicate rows, subjects in two splits, data sets short of a split, mixed voxel sizes.

    `one_voxel_size=False` when the volumes are registered (and so resampled) to the template grid anyway.
    """
    check_duplicates(rows, manifest)
    check_subject_splits(rows, manifest)
    check_roles(rows, manifest, sources, targets)
    if one_voxel_size:
        check_voxel_sizes(rows, manifest)


def check_duplicates(rows: Sequence[VolumeRow], manifest: Path) -> None:
    """One row per image file, and one image per (data set, subject, modality, split): else slices count twice."""
    seen_images: dict[Path, int] = {}
    seen_scans: dict[tuple[str, str, str, str], int] = {}
    for row in rows:
        if row.image in seen_images:
            raise BrainspadeError(f"{manifest}:{row.line}: image {row.image.name} is already listed on line "
                                  f"{seen_images[row.image]}; remove the duplicate row")
        scan = (row.dataset, row.subject, row.modality, row.split)
        if scan in seen_scans:
            raise BrainspadeError(f"{manifest}:{row.line}: subject {row.subject} of {row.dataset} already has a "
                                  f"{row.modality} {row.split} image on line {seen_scans[scan]}; keep one row per scan")
        seen_images[row.image] = row.line
        seen_scans[scan] = row.line


def check_subject_splits(rows: Sequence[VolumeRow], manifest: Path) -> None:
    """A subject (of a data set) in two splits leaks test anatomy into training: refuse it.

    Labels files are checked too: two subject names sharing one labels file are one subject.
    """
    split_of: dict[tuple[str, str], tuple[str, int]] = {}
    labels_split: dict[Path, tuple[str, int]] = {}
    for row in rows:
        keys: list[tuple[object, dict]] = [((row.dataset, row.subject), split_of)]
        if row.labels is not None:  # an unlabelled row shares no labels file
            keys.append((row.labels, labels_split))
        for key, table in keys:
            split, line = table.setdefault(key, (row.split, row.line))
            if split != row.split:
                what = f"subject {row.subject} of {row.dataset}" if table is split_of else f"labels {row.labels.name}"
                raise BrainspadeError(f"{manifest}:{row.line}: {what} is {row.split} here but {split} on line {line}; "
                                      "a subject belongs to one split (else test anatomy leaks into training)")


def check_roles(rows: Sequence[VolumeRow], manifest: Path, sources: Sequence[str], targets: Sequence[str]) -> None:
    """Every data set with a role exists and has train and test rows: generators train on one, experiments test on
    the other. A source row needs labels (the generators learn from them); a target may be wholly unlabelled (style
    images only, in its train split; nothing of it can be scored)."""
    splits: dict[str, set[str]] = defaultdict(set)
    labelled: dict[str, bool] = defaultdict(bool)
    for row in rows:
        splits[row.dataset].add(row.split)
        labelled[row.dataset] |= row.labels is not None
        if row.labels is None and row.dataset in sources:
            raise BrainspadeError(f"{manifest}:{row.line}: {row.image.name} of source data set {row.dataset} has no "
                                  "labels; the generators learn from source labels: give its labels file, or name "
                                  f"{row.dataset} in data.target_datasets")
    named = [*sources, *targets]
    missing = [name for name in named if name not in splits]
    if missing:
        raise BrainspadeError(
            f"{manifest}: data set(s) {missing} named in data.source_datasets/target_datasets are not in "
            f"the manifest (it has {sorted(splits)}); fix the config"
        )
    overlap = sorted(set(sources) & set(targets))
    if overlap:
        raise BrainspadeError(f"data sets {overlap} are both source and target; a data set has one role")
    for name in named:
        for split, use in (("train", "the generators and reference segmenters train on it"),
                           ("test", "the experiments are scored on it")):
            if split == "test" and name in targets and not labelled[name]:
                continue  # an unlabelled target gives style images only
            if split not in splits[name]:
                raise BrainspadeError(f"{manifest}: data set {name} has no {split} rows ({use}); "
                                      f"mark some of its subjects split={split}")


def check_voxel_sizes(rows: Sequence[VolumeRow], manifest: Path, tolerance_mm: float = 0.01) -> None:
    """All images share one voxel size (read from headers only): slices of another size cover another field of view.

    Without registration brainspade does not resample: `data.register=affine` resamples to the template grid.
    """
    reference: tuple[np.ndarray, VolumeRow] | None = None
    for row in rows:
        if not row.image.is_file():
            continue  # reported with its fix when the volume is read
        try:
            affine = nib.load(str(row.image)).affine
        except Exception:  # a corrupt file is reported, with its fix, when the volume is read
            continue
        voxel_size = _ras_voxel_size(affine)
        if reference is None:
            reference = (voxel_size, row)
        elif not np.allclose(voxel_size, reference[0], atol=tolerance_mm):
            raise BrainspadeError(
                f"{manifest}:{row.line}: {row.image.name} has {_mm(voxel_size)} voxels but {reference[1].image.name} "
                f"(line {reference[1].line}) has {_mm(reference[0])}; resample every volume to one voxel size "
                "or set data.register=affine"
            )


def _ras_voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel size along the R, A, S axes (the order slices are cut in), from the affine's columns."""
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_axis = nib.orientations.io_orientation(affine)[:, 0].astype(int)
    ordered = np.empty(3)
    ordered[ras_axis] = sizes
    return ordered


def _mm(voxel_size: np.ndarray) -> str:
    return "x".join(f"{v:g}" for v in np.round(voxel_size, 3)) + " mm"
