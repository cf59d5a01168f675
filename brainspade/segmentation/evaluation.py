"""Test sets, per-volume predictions and per-volume metrics of the arms of one evaluation.

A test set is the *test split* of one data set and modality in the slice cache (or its *dev split*,
to choose settings without reading a test volume: `evaluation_split=dev`); its 2D slices are
segmented one by one and stacked back into volumes (by subject, in slice order) before any
metric is computed. Predictions are saved as NIfTI volumes (H, W, S) with the slice order in
`slices.csv`, so every number of a report can be recomputed from them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_path
from brainspade.engine.logging import progress
from brainspade.errors import BrainspadeError
from brainspade.evaluation.metrics import volume_metrics
from brainspade.segmentation.nnunet import Segmenter
from brainspade.segmentation.raw_dataset import labels_from_pv

RESULT_COLUMNS = ("evaluation", "arm", "subject", "class", "dice", "precision", "recall")
# The splits an evaluation may score: test for the report, dev for choosing settings (METHOD.md, dev and test).
EVALUATION_SPLITS = ("test", "dev")


@dataclass(frozen=True)
class Relation:
    """A finding of the paper to test here: arm `better` scores higher than arm `worse` on this test set."""

    finding: str
    better: str
    worse: str
    metric: str = "dice"


@dataclass(frozen=True)
class Evaluation:
    """One test set of an experiment: a split of a data set and modality, the arms tested, the classes scored."""

    name: str
    test_dataset: str
    test_modality: str
    arms: tuple[str, ...]
    classes: tuple[str, ...]
    lesion_metrics: bool  # precision and recall besides Dice
    relations: tuple[Relation, ...] = ()  # the paper's findings on this test set, opening the report
    split: str = "test"  # the split scored (EVALUATION_SPLITS); run-experiment sets it from `evaluation_split`

    def __post_init__(self) -> None:
        if self.split not in EVALUATION_SPLITS:
            raise BrainspadeError(f"evaluation_split={self.split!r}: choose one of {', '.join(EVALUATION_SPLITS)}")

    @classmethod
    def from_dict(cls, node: Mapping[str, Any]) -> Evaluation:
        """An entry of `experiments.evaluations.<experiment>` (plain containers), refused in one line when malformed."""
        try:
            evaluation = cls(str(node["name"]), str(node["test"]["dataset"]), str(node["test"]["modality"]),
                             tuple(map(str, node["arms"])), tuple(map(str, node["classes"])),
                             bool(node["lesion_metrics"]),
                             tuple(Relation(**relation) for relation in node.get("relations") or ()))
        except (KeyError, TypeError) as error:
            raise BrainspadeError(f"experiments.evaluations: {dict(node)} lacks {error}; give name, test: {{dataset, "
                                  "modality}, arms, classes, lesion_metrics and optionally relations: [{finding, "
                                  "better, worse, metric}]") from None
        for relation in evaluation.relations:
            stray = [arm for arm in (relation.better, relation.worse) if arm not in evaluation.arms]
            if stray or relation.metric not in evaluation.metrics:
                raise BrainspadeError(f"experiments.evaluations.{evaluation.name}.relations: {relation.finding!r} "
                                      f"compares {relation.better} and {relation.worse} on {relation.metric}; both "
                                      f"must be arms of the evaluation ({list(evaluation.arms)}) and the metric one "
                                      f"of {evaluation.metrics}")
        return evaluation

    @property
    def metrics(self) -> list[str]:
        return ["dice", "precision", "recall"] if self.lesion_metrics else ["dice"]

    def check_classes(self, channels: Sequence[str]) -> None:
        """Classes must be foreground channels of the data (background is never scored)."""
        unknown = [c for c in self.classes if c not in channels[1:]]
        if unknown:
            raise BrainspadeError(f"experiments.evaluations: classes {unknown} of {self.name!r} are not "
                                  f"foreground channels of the data ({list(channels[1:])})")


@dataclass
class TestVolume:
    """One test subject: images and ground-truth label ids (S, H, W), and the cache rows they came from."""

    subject: str
    images: np.ndarray
    truth: np.ndarray
    slice_indices: np.ndarray
    image_indices: np.ndarray


def stack_volumes(
    slices: Sequence[np.ndarray], subjects: Sequence[str], slice_indices: Sequence[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group 2D slices by subject into (S, H, W) volumes ordered by slice index.

    Returns {subject: (volume, sorted slice indices)}, subjects in sorted order. Two slices of
    one subject with the same index are an error (a volume cannot hold both).
    """
    if not len(slices) == len(subjects) == len(slice_indices):
        raise ValueError("slices, subjects and slice indices must have the same length")
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    subjects = np.asarray(subjects).astype(str)
    slice_indices = np.asarray(slice_indices, dtype=np.int64)
    for subject in sorted(set(subjects.tolist())):
        members = np.flatnonzero(subjects == subject)
        order = members[np.argsort(slice_indices[members], kind="stable")]
        indices = slice_indices[order]
        if len(np.unique(indices)) != len(indices):
            raise ValueError(f"subject {subject}: the same slice index appears twice")
        volumes[subject] = (np.stack([np.asarray(slices[i]) for i in order]), indices)
    return volumes


def split_slice_indices(cache: SliceCache, dataset: str, modality: str, split: str = "test") -> np.ndarray:
    """Cache rows of the `split` slices of one data set and modality; none is refused in one line."""
    indices = cache.image_indices(split=split, datasets=[dataset], modalities=[modality])
    if indices.size == 0:
        other = "; score the test split (evaluation_split=test) or give some subjects split dev in the manifest" \
            if split == "dev" else ""
        raise BrainspadeError(f"{cache.folder}: no {split} slices of data set {dataset!r} with modality "
                              f"{modality!r}{other}")
    return indices


def load_test_set(cache: SliceCache, dataset: str, modality: str, split: str = "test") -> list[TestVolume]:
    """The `split` slices (test, or dev) of one data set and modality, as volumes sorted by subject."""
    indices = split_slice_indices(cache, dataset, modality, split)
    table = cache.image_table
    subjects = table["subject"][indices]
    slice_indices = table["slice_index"][indices]
    images = stack_volumes([cache.image(i) for i in indices], subjects, slice_indices)
    truths = stack_volumes(
        [labels_from_pv(cache.pv_map(int(table["label_index"][i]))) for i in indices], subjects, slice_indices
    )
    rows = stack_volumes(list(indices), subjects, slice_indices)
    return [
        TestVolume(subject, images[subject][0], truths[subject][0], images[subject][1], rows[subject][0])
        for subject in images
    ]


def predict_test_set(segmenter: Segmenter, volumes: list[TestVolume], desc: str) -> dict[str, np.ndarray]:
    """Label volumes (S, H, W) uint8 per subject, each slice segmented on its own (2D nnU-Net)."""
    bar = progress(total=sum(len(v.images) for v in volumes), desc=desc, unit="slice")
    predictions = {}
    for volume in volumes:
        predictions[volume.subject] = segmenter.segment_slices(volume.images)
        bar.update(len(volume.images))
    bar.close()
    return predictions


def score(
    evaluation: str,
    arm: str,
    volumes: list[TestVolume],
    predictions: dict[str, np.ndarray],
    classes: dict[str, int],
    lesion_metrics: bool,
) -> list[dict[str, object]]:
    """results.csv rows of one arm: one per test volume and class."""
    rows = []
    for volume in volumes:
        for row in volume_metrics(predictions[volume.subject], volume.truth, classes, lesion_metrics):
            rows.append({"evaluation": evaluation, "arm": arm, "subject": volume.subject, **row})
    return rows


def save_volume(path: Path, labels: np.ndarray) -> None:
    """A label volume (S, H, W) as NIfTI (H, W, S): slices along the third axis like the source volumes."""
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(1, 2, 0)).astype(np.uint8), np.eye(4)), str(tmp))


def load_volume(path: Path) -> np.ndarray:
    """A label volume saved by `save_volume`, back as (S, H, W) uint8."""
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 0, 1).astype(np.uint8)


def write_slice_table(path: Path, volumes: list[TestVolume]) -> None:
    """Which cache slice each prediction slice is: subject, position in the volume, slice index, cache row."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "position", "slice_index", "image_index"])
        for volume in volumes:
            for position, (slice_index, image_index) in enumerate(zip(volume.slice_indices, volume.image_indices,
                                                                      strict=True)):
                writer.writerow([volume.subject, position, int(slice_index), int(image_index)])
