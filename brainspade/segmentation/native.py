"""Segment a lab's own scans with a trained arm, and hand the labels back on each scan's own grid.

A scan (any orientation, voxel size, field of view) is registered affinely to the MNI template the
arm's training data lives on, resampled onto that grid, sliced axially and z-scored per slice
inside the template's brain mask (as prepare-data z-scores inside the labelled brain), and each
slice is segmented by the arm's 2D nnU-Net. That mask is the brain: skull, scalp and neck are
set to air before prediction (the training slices hold nothing else around the brain) and are
background in the labels, so a scan needs no brain extraction first. The stacked label volume
goes back to the scan's grid through the inverse transform: the network's per-class
probabilities are resampled linearly and the largest wins, which keeps borders smooth where nearest-neighbour would stair-step, and keeps
thin CSF that resampling hard labels would erode.

A model folder (W/segmentation/models/<arm>) is self-contained once it holds `model.json`
(the arm, the channel schema, the template resolution and the slice geometry); `export_model`
copies just the model (no training data) anywhere, and `brainspade segment model=FOLDER` runs
from it with nothing else.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter1d

from brainspade.data.nifti import load_header
from brainspade.data.registration import (
    Grid,
    Template,
    check_registration,
    load_template,
    pose_of,
    register_to_template,
    resample,
    resample_to_template,
)
from brainspade.data.slicing import brain_slice_indices, crop_or_pad, zscore_in_brain
from brainspade.engine.atomic import atomic_path, write_text_atomic
from brainspade.engine.checkpoint import load_nnunet_checkpoint
from brainspade.engine.logging import progress
from brainspade.errors import BrainspadeError
from brainspade.segmentation.model_files import read_dataset_json, read_plans
from brainspade.segmentation.nnunet import FOLD, Segmenter, results_folder

MODEL_CARD = "model.json"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ModelCard:
    """What a model folder needs besides nnU-Net's own files to segment a new scan."""

    arm: str  # the nnU-Net data set inside the folder is named after it
    channels: list[str]  # label id = channel index
    template_resolution_mm: int  # the MNI template grid the training slices were cut from
    slice_size: list[int]  # [H, W] after centred crop / pad
    min_brain_fraction: float  # slices with less template brain than this are left background

    def save(self, folder: Path) -> None:
        write_text_atomic(folder / MODEL_CARD, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        path = folder / MODEL_CARD
        if not path.is_file():
            raise BrainspadeError(f"{path}: missing; run `brainspade segment model=ARM workdir=W` once in the workdir "
                                  "that trained the arm (it writes the file), then copy the folder")
        try:
            card = cls(**json.loads(path.read_text()))
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BrainspadeError(f"{path}: not a brainspade model card ({error}); copy it again from the workdir") \
                from None
        card.check(path)
        return card

    def check(self, path: Path) -> None:
        """Every field has its type (the card is data: an arm is a name, channels are names, sizes are counts)."""
        valid = {
            "arm": isinstance(self.arm, str) and bool(self.arm) and "/" not in self.arm and self.arm not in (".", ".."),
            "channels": isinstance(self.channels, list) and len(self.channels) >= 2
            and all(isinstance(c, str) for c in self.channels),
            "template_resolution_mm": self.template_resolution_mm in (1, 2, 4),
            "slice_size": isinstance(self.slice_size, list) and len(self.slice_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and 4 <= s <= 4096 for s in self.slice_size),
            "min_brain_fraction": isinstance(self.min_brain_fraction, (int, float))
            and 0 <= self.min_brain_fraction <= 1,
        }
        for key, holds in valid.items():
            if not holds:
                raise BrainspadeError(f"{path}: {key}={getattr(self, key)!r} is not a valid value; copy model.json "
                                      "again from the workdir that trained the arm")


def export_model(folder: Path, card: ModelCard, destination: Path) -> Path:
    """Copy what `segment` needs (model.json, nnU-Net's plans, dataset.json, final weights) to `destination`.

    The arm folder also holds its training data (raw links, preprocessed arrays: gigabytes for a
    20,000-slice arm); the exported folder holds only the model (megabytes).
    """
    source = results_folder(folder / "nnunet", card.arm)
    target = results_folder(destination / "nnunet", card.arm)
    if destination.is_file() or (destination.is_dir() and any(destination.iterdir())
                                 and not (destination / MODEL_CARD).is_file()):
        raise BrainspadeError(f"export={destination}: already holds other files; export into a new folder (or one "
                              "an earlier export made)")
    names = ("plans.json", "dataset.json", f"fold_{FOLD}/checkpoint_final.pth")
    for name in names:
        if not (source / name).is_file():
            raise BrainspadeError(f"{source / name}: missing; the arm {card.arm} is not a finished nnU-Net")
    # What is shared is checked as it would be loaded: a folder that could not be used is not passed on.
    read_plans(source / "plans.json")
    read_dataset_json(source / "dataset.json")
    load_nnunet_checkpoint(source / f"fold_{FOLD}" / "checkpoint_final.pth")
    for name in names:
        with atomic_path(target / name) as tmp:
            shutil.copyfile(source / name, tmp)
    card.save(destination)
    return destination


@dataclass(frozen=True)
class NativeSegmentation:
    """One scan's labels on its own grid, and how its registration went."""

    labels: np.ndarray  # uint8, the scan's shape
    registration: dict  # tissue_similarity, the start that won and the pose found (registration.pose_of)


def load_scan(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A 3D scan as stored (no reorientation: the output must share its grid), plus its data as float32."""
    image = load_header(path)  # a header asking for more than the file or the machine holds: refused unread
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise BrainspadeError(f"{path}: not a readable NIfTI file ({type(error).__name__}); re-export it") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BrainspadeError(f"{path}: has shape {data.shape}; segment takes 3D scans")
    if not np.isfinite(data).all():
        raise BrainspadeError(f"{path}: contains NaN or infinite values; fix or mask them first")
    if data.size == 0 or data.min() == data.max():
        raise BrainspadeError(f"{path}: every voxel is {data.flat[0] if data.size else 'missing'} (an empty or constant scan); "
                              "re-export it from the scanner's or the converter's output")
    return image, data


def scan_files(input_path: Path) -> list[Path]:
    """The NIfTI files named by `input` (one file, or every *.nii / *.nii.gz in a folder)."""
    if input_path.is_file():
        return [input_path]
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and
                       not p.name.endswith(("_seg.nii.gz", "_seg.nii")))
        if files:
            return files
        raise BrainspadeError(f"{input_path}: no .nii / .nii.gz files in this folder; point input= at your scans")
    raise BrainspadeError(f"{input_path}: not found; set input= to a NIfTI file or a folder of them")


def scan_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def segment_scan(data: np.ndarray, affine: np.ndarray, segmenter: Segmenter, card: ModelCard,
                 min_similarity: float, path: Path, seed: int = 0, through_plane_sigma_mm: float = 0.0,
                 ) -> NativeSegmentation:
    """Register, slice, predict, stack and map back: label ids on the scan's own grid."""
    template = load_template(card.template_resolution_mm)
    try:
        registration = register_to_template(data, affine, template, seed, accept=min_similarity)
    except BrainspadeError as error:
        raise BrainspadeError(f"{path}: {error}") from None
    check_registration(registration, min_similarity, path)
    moved = resample_to_template(data, affine, registration.transform, template)
    probabilities = template_probabilities(moved, template, segmenter, card, through_plane_sigma_mm)
    back = resample(probabilities, template.grid.affine, registration.transform.GetInverse(), Grid(data.shape, affine))
    back[..., 0] += (back.sum(axis=-1) < 0.5)  # outside the template grid: background
    pose = {"tissue_similarity": round(registration.similarity, 4), "start": registration.start,
            **pose_of(registration.transform)}
    return NativeSegmentation(np.argmax(back, axis=-1).astype(np.uint8), pose)


def template_probabilities(image: np.ndarray, template: Template, segmenter: Segmenter,
                           card: ModelCard, through_plane_sigma_mm: float = 0.0) -> np.ndarray:
    """Class probabilities (X, Y, Z, C) of a template-grid image: each brain slice segmented as prepare-data cuts it.

    The registered template's brain mask is the brain: outside it the image is set to its darkest value, as the
    training slices hold nothing but air around the brain, and the probabilities to background, so skull, scalp
    and neck are never labelled. Slices without enough template brain are background with certainty.
    `through_plane_sigma_mm` > 0 smooths the probabilities across slices (Gaussian), so that neighbouring
    slices, each segmented on its own, agree.
    """
    probabilities = np.zeros((*image.shape, len(card.channels)), dtype=np.float32)
    probabilities[..., 0] = 1.0
    fill = float(image.min())
    brain_only = np.where(template.brain, image, fill)
    planes = brain_slice_indices(template.brain, card.min_brain_fraction, every=1)
    normalised = np.zeros((len(planes), *card.slice_size), dtype=np.float32)
    for k, z in enumerate(planes):
        plane = crop_or_pad(brain_only[:, :, z], card.slice_size, fill=fill)
        brain = crop_or_pad(template.brain[:, :, z], card.slice_size, fill=False)
        # The cache stores float16 slices: the network sees the same rounding here.
        normalised[k] = zscore_in_brain(plane, brain).astype(np.float16).astype(np.float32)
    for z, predicted in zip(planes, segmenter.slice_probabilities(normalised), strict=True):
        # crop_or_pad back to the plane's own size undoes the centred crop / pad exactly.
        probabilities[:, :, z] = crop_or_pad(predicted, image.shape[:2])
    if through_plane_sigma_mm > 0:
        probabilities = gaussian_filter1d(probabilities, through_plane_sigma_mm / template.resolution_mm, axis=2,
                                          mode="nearest")
    probabilities[~template.brain] = np.eye(len(card.channels), dtype=np.float32)[0]
    return probabilities


def write_labels(path: Path, labels: np.ndarray, like: nib.Nifti1Image) -> None:
    """`labels` as NIfTI with the scan's shape, affine and orientation codes."""
    header = like.header.copy() if isinstance(like, nib.Nifti1Image) else None
    out = nib.Nifti1Image(labels.astype(np.uint8), like.affine, header=header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))


def class_volumes_ml(labels: np.ndarray, affine: np.ndarray, channels: list[str]) -> dict[str, float]:
    """Millilitres of each foreground class in a label volume."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(channels))
    return {name: round(float(counts[i]) * voxel_ml, 3) for i, name in enumerate(channels) if i}


VOLUMES, REGISTRATION, FAILED, QC, QC_FOLDER = "volumes.csv", "registration.csv", "failed.csv", "qc.png", "qc"
# Read by nibabel, SimpleITK or the registration on one scan: its failure costs that scan alone.
SCAN_ERRORS = (BrainspadeError, RuntimeError)


@dataclass(frozen=True)
class SegmentedFolder:
    """What one `segment` run did: the volumes rows of the scans it segmented, and the scans that failed."""

    rows: list[dict]
    failed: list[dict]  # scan, file, reason


def check_scan_names(files: list[Path]) -> dict[str, Path]:
    """Each scan's output name, refused before any work when two scans would write one label file."""
    names: dict[str, Path] = {}
    for path in files:
        name = scan_name(path)
        if name in names:
            raise BrainspadeError(f"{names[name]} and {path.name} would both write {name}_seg.nii.gz; rename one of "
                                  "them or segment them into separate output folders")
        names[name] = path
    return names


def check_output_folder(output: Path) -> None:
    """The output folder exists (made if missing) and can be written, checked before any scan is read."""
    if output.exists() and not output.is_dir():
        raise BrainspadeError(f"output={output}: is a file; set output= to a folder")
    existing = next(p for p in (output, *output.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BrainspadeError(f"output={output}: {existing} is not writable; set output= to a folder you can write")
    output.mkdir(parents=True, exist_ok=True)


def write_table(path: Path, rows: list[dict]) -> None:
    """A CSV of `rows` written atomically (columns: every key, in first-seen order); removed when there are none."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@contextlib.contextmanager
def folder_lock(output: Path):
    """An exclusive lock on `output` for the block: two runs into one folder merge their tables in turn."""
    import fcntl

    with (output / ".segment.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def segment_files(files: list[Path], output: Path, segmenter: Segmenter, card: ModelCard, min_similarity: float,
                  seed: int = 0, through_plane_sigma_mm: float = 0.0) -> SegmentedFolder:
    """Segment each scan on its own into `output`: <name>_seg.nii.gz, qc/<name>.png, then volumes.csv,
    registration.csv (similarity and pose found), qc.png and failed.csv for the whole folder.

    A scan that cannot be read, registered or segmented is reported in one line and in failed.csv; the others go on.
    volumes.csv and qc.png describe every scan whose labels are in the folder (rows of earlier runs kept, rows of
    scans segmented again replaced, rows whose label file is gone dropped), merged under a lock and written
    atomically, so two runs into one folder lose no row.
    """
    names = check_scan_names(files)
    check_output_folder(output)
    rows, failed, poses = [], [], []
    for name, path in progress(list(names.items()), desc="segment", unit="scan"):
        try:
            image, data = load_scan(path)
            result = segment_scan(data, image.affine, segmenter, card, min_similarity, path, seed,
                                  through_plane_sigma_mm)
        except SCAN_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            reason = reason if str(path) in reason else f"{path}: {reason}"
            print(f"[segment] failed: {reason}", flush=True)
            failed.append({"scan": name, "file": str(path), "reason": reason})
            continue
        write_labels(output / f"{name}_seg.nii.gz", result.labels, image)
        write_qc_figure(output / QC_FOLDER / f"{name}.png", [(name, qc_planes(data, result.labels, image.affine))],
                        len(card.channels))
        rows.append({"scan": name, **{f"{k}_ml": v for k, v in class_volumes_ml(result.labels, image.affine,
                                                                                  card.channels).items()},
                     "tissue_similarity": result.registration["tissue_similarity"]})
        poses.append({"scan": name, **result.registration})
    with folder_lock(output):
        merge_folder_tables(output, rows, failed, poses)
    return SegmentedFolder(rows, failed)


def merge_folder_tables(output: Path, rows: list[dict], failed: list[dict], poses: list[dict]) -> None:
    """volumes.csv, registration.csv, failed.csv and qc.png of `output` with this run's scans merged into what the
    folder holds."""
    done = {row["scan"] for row in rows}
    tried = done | {row["scan"] for row in failed}
    labelled = {p.name.removesuffix("_seg.nii.gz") for p in output.glob("*_seg.nii.gz")}
    # A scan that fails now keeps the rows of the labels an earlier run left (they are still in the folder).
    merged = {}
    for table, new_rows in ((VOLUMES, rows), (REGISTRATION, poses)):
        kept = [row for row in read_table(output / table) if row["scan"] not in done and row["scan"] in labelled]
        merged[table] = sorted(kept + new_rows, key=lambda row: row["scan"])
        write_table(output / table, merged[table])
    earlier_failures = [row for row in read_table(output / FAILED) if row["scan"] not in tried]
    write_table(output / FAILED, sorted(earlier_failures + failed, key=lambda row: row["scan"]))
    volumes = merged[VOLUMES]
    write_qc_montage(output / QC, [output / QC_FOLDER / f"{row['scan']}.png" for row in volumes])


def write_qc_montage(path: Path, pictures: list[Path]) -> None:
    """One figure of the scans' QC rows (qc/<name>.png) stacked top to bottom; removed when there is none."""
    from matplotlib.image import imread, imsave

    images = [imread(p) for p in pictures if p.is_file()]
    if not images:
        path.unlink(missing_ok=True)
        return
    width = max(image.shape[1] for image in images)
    padded = [np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=1.0) for image in images]
    with atomic_path(path) as tmp:
        imsave(tmp, np.concatenate(padded, axis=0))


def qc_planes(data: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The middle sagittal, coronal and axial planes (RAS view) of a scan and its labels, with their aspect ratios."""
    orientation = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt("RAS"))
    data = nib.orientations.apply_orientation(data, orientation)
    labels = nib.orientations.apply_orientation(labels, orientation)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[orientation[:, 0].astype(int).argsort()]
    planes = []
    for axis in range(3):
        middle = data.shape[axis] // 2
        across, up = (a for a in range(3) if a != axis)
        # Millimetres, not voxels: anisotropic scans keep their shape.
        planes.append((np.take(data, middle, axis=axis).T, np.take(labels, middle, axis=axis).T,
                       float(zooms[up] / zooms[across])))
    return planes


def write_qc_figure(path: Path, views: list[tuple[str, list[tuple[np.ndarray, np.ndarray, float]]]],
                    n_classes: int) -> None:
    """One row per scan: labels over the image on its middle sagittal, coronal and axial slices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3 * len(views)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(views), 3, squeeze=False)
    for row, (name, planes) in zip(axes, views, strict=True):
        for view, (plane, plane_labels, aspect) in zip(row, planes, strict=True):
            view.imshow(plane, cmap="gray", origin="lower", aspect=aspect)
            view.imshow(np.ma.masked_equal(plane_labels, 0), cmap="tab10", vmin=0, vmax=max(n_classes, 10) - 1,
                        alpha=0.45, origin="lower", interpolation="nearest", aspect=aspect)
            view.set_axis_off()
        row[0].set_title(name, fontsize=8, loc="left")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
