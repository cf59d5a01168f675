"""Turn validated NIfTI volumes into the slice cache (see slice_cache.py for the layout)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainspade.data.brain_masks import image_brain_mask
from brainspade.data.label_sources import LabelReading, load_labels, normalised
from brainspade.data.manifest import VolumeRow
from brainspade.data.registration import (
    RegistrationTarget,
    check_registration,
    load_template,
    register_to_template,
    resample_to_template,
    save_transform,
    tissue_similarity,
)
from brainspade.data.slice_cache import IMAGE_COLUMNS, LABEL_COLUMNS, UNLABELLED, write_table
from brainspade.data.slicing import background_channel, brain_slice_indices, crop_or_pad, zscore_in_brain
from brainspade.data.volumes import check_same_grid, load_image
from brainspade.engine.logging import progress
from brainspade.errors import BrainspadeError

if TYPE_CHECKING:
    import SimpleITK as sitk


def build_slice_cache(
    rows: Sequence[VolumeRow],
    out_folder: Path,
    *,
    root: Path,
    channels: Sequence[str],
    lesion_channels: Sequence[str],
    reading: LabelReading,
    label_format: str,
    registration: RegistrationTarget | None,
    target_datasets: Sequence[str],
    template_resolution_mm: int,
    size: Sequence[int],
    min_brain_fraction: float,
    every: int,
) -> dict[str, int]:
    """Validate every volume and write the cache arrays and tables into `out_folder`.

    Labels are read in `label_format` (a row's own `label_format` column wins). With a
    `registration`, each labels file's first image is registered to the MNI template, its
    labels follow through the same transform (linear on PV maps), further images sharing the
    labels file (T1 and FLAIR of one subject) are resampled with it too, and the transforms
    are saved in `out_folder/registration/`. Every row is validated before anything is
    written, so a bad row leaves nothing behind (the caller builds into a temporary folder).

    The brain that selects slices and z-scores them is the label map's for a labelled row of a
    source (or unassigned) data set; for every image of `target_datasets` and every unlabelled
    image it is `image_brain_mask`'s (the template's at `template_resolution_mm` on its grid, else
    the image's intensities), so a target's labels never decide how its images are read.
    Returns counts for the stage manifest.
    """
    unknown = [c for c in lesion_channels if c not in channels]
    if unknown:
        raise BrainspadeError(f"data.lesion_channels {unknown} are not in data.channels {list(channels)}; fix the config")
    background = background_channel(channels)
    lesion_ids = [list(channels).index(c) for c in lesion_channels]
    images, brain_masks, pv_maps, image_rows, label_rows = [], [], [], [], []
    label_index_of: dict[tuple[Path, int], int] = {}
    loaded_labels: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    transforms: dict[Path | tuple[str, str], sitk.Transform] = {}
    registration_rows: list[dict] = []

    for row in progress(rows, desc="prepare-data", unit="volume"):
        image, image_affine = load_image(row.image)
        pv = None
        if row.labels is not None:
            if row.labels not in loaded_labels:
                loaded_labels.clear()  # rows sharing a labels file are adjacent in practice; keep memory flat
                loaded_labels[row.labels] = load_labels(row.labels, row.label_format or label_format, reading)
            pv, labels_affine = loaded_labels[row.labels]
            if registration is None:
                check_same_grid(row.image, row.labels, image.shape, pv.shape[:3], image_affine, labels_affine)
        if registration is not None:
            image, pv = _into_template_space(row, image, image_affine, loaded_labels, transforms, registration,
                                             out_folder / "registration", registration_rows)
            image_affine = load_template(registration.resolution_mm).grid.affine
        if pv is None or row.dataset in target_datasets:
            brain = image_brain_mask(image, image_affine, load_template(template_resolution_mm))
        else:
            brain = pv[..., background] < 0.5
        depth = image.shape[2]
        for z in brain_slice_indices(brain, min_brain_fraction, every):
            key = (row.labels, int(z))
            position = float(z) / max(depth - 1, 1)
            if pv is not None and key not in label_index_of:
                pv_slice = crop_or_pad(pv[:, :, z, :], size)
                # Padding is background: set it so padded pixels still sum to 1.
                pv_slice[(pv_slice.sum(axis=2) == 0), background] = 1.0
                label_index_of[key] = len(pv_maps)
                pv_maps.append(np.moveaxis(pv_slice, 2, 0).astype(np.float16))
                brain_slice = pv_slice[..., background] < 0.5
                brain_pixels = max(int(brain_slice.sum()), 1)
                label_rows.append(
                    {
                        "subject": row.subject,
                        "dataset": row.dataset,
                        "split": row.split,
                        "slice_index": int(z),
                        "slice_position": round(position, 6),
                        "brain_fraction": round(brain_pixels / brain_slice.size, 6),
                        "labels_file": str(row.labels.relative_to(root.resolve())),
                        **{
                            f"lesion_{name}": round(float(pv_slice[..., i].sum()) / brain_pixels, 6)
                            for name, i in zip(lesion_channels, lesion_ids, strict=True)
                        },
                    }
                )
            image_slice = crop_or_pad(image[:, :, z], size, fill=float(image.min()))
            brain_slice = crop_or_pad(brain[:, :, z], size, fill=False)
            images.append(zscore_in_brain(image_slice, brain_slice).astype(np.float16))
            brain_masks.append(np.packbits(brain_slice, axis=-1))
            image_rows.append(
                {
                    "label_index": UNLABELLED if pv is None else label_index_of[key],
                    "subject": row.subject,
                    "dataset": row.dataset,
                    "modality": row.modality,
                    "split": row.split,
                    "slice_index": int(z),
                    "slice_position": round(position, 6),
                    "image_file": str(row.image.relative_to(root.resolve())),
                }
            )
    if not images:
        raise BrainspadeError(
            f"{root}/manifest.csv: no slice has brain above slices.min_brain_fraction={min_brain_fraction}; "
            "check the label channels (is background first / named 'background'?)"
        )
    np.save(out_folder / "images.npy", np.stack(images))
    np.save(out_folder / "brain_masks.npy", np.stack(brain_masks))
    np.save(out_folder / "pv_maps.npy", np.stack(pv_maps) if pv_maps else np.zeros((0, len(channels), *size), np.float16))
    write_table(out_folder / "images.csv", IMAGE_COLUMNS, image_rows)
    write_table(out_folder / "labels.csv", [*LABEL_COLUMNS, *[f"lesion_{c}" for c in lesion_channels]], label_rows)
    if registration_rows:
        write_table(out_folder / "registration.csv", list(registration_rows[0]), registration_rows)
    schema = {"channels": list(channels), "lesion_channels": list(lesion_channels), "size": list(size)}
    (out_folder / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return {"image_slices": len(images), "label_slices": len(pv_maps), "volumes": len(rows)}


def _into_template_space(
    row: VolumeRow,
    image: np.ndarray,
    image_affine: np.ndarray,
    loaded_labels: dict[Path, tuple[np.ndarray, np.ndarray]],
    transforms: dict[Path, sitk.Transform],
    target: RegistrationTarget,
    transform_folder: Path,
    records: list[dict],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The row's image and PV maps (None without labels) on the template grid; registers when its scan is new.

    A scan is a labels file, or for an unlabelled row its data set and subject.
    """
    template = load_template(target.resolution_mm)
    scan = row.labels if row.labels is not None else (row.dataset, row.subject)
    if scan not in transforms:
        transforms.clear()
        try:
            registration = register_to_template(image, image_affine, template, target.seed, target.min_similarity)
        except BrainspadeError as error:
            raise BrainspadeError(f"{row.image}: {error}") from None
        check_registration(registration, target.min_similarity, row.image)
        if row.labels is not None:
            pv, labels_affine = loaded_labels[row.labels]
            moved = normalised(resample_to_template(pv, labels_affine, registration.transform, template))
            loaded_labels[row.labels] = (moved, template.grid.affine)  # later rows of this labels file reuse it
        transforms[scan] = registration.transform
        transform_folder.mkdir(parents=True, exist_ok=True)
        save_transform(registration.transform, transform_folder / f"{row.dataset}_{row.subject}.tfm")
        similarity = registration.similarity
    else:
        similarity = None
    transform = transforms[scan]
    moved_image = resample_to_template(image, image_affine, transform, template)
    if similarity is None:  # a second image of the subject, moved with the first one's transform
        similarity = tissue_similarity(moved_image, template)
        if similarity < target.min_similarity:
            raise BrainspadeError(f"{row.image}: does not line up with the other scan of {row.subject} after "
                                  f"registration (tissue similarity {similarity:.2f}); are both in one physical space?")
    records.append({"subject": row.subject, "dataset": row.dataset, "modality": row.modality,
                    "image_file": row.image.name, "transform": f"registration/{row.dataset}_{row.subject}.tfm",
                    "tissue_similarity": round(float(similarity), 4)})
    return moved_image, None if row.labels is None else loaded_labels[row.labels][0]
