"""Turn validated NIfTI volumes into the slice cache (see slice_cache.py for the layout)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainspade.data.manifest import VolumeRow
from brainspade.data.slice_cache import IMAGE_COLUMNS, LABEL_COLUMNS, write_table
from brainspade.data.slicing import background_channel, brain_slice_indices, crop_or_pad, zscore_in_brain
from brainspade.data.volumes import check_same_grid, load_image, load_pv_maps
from brainspade.engine.logging import progress
from brainspade.errors import BrainspadeError


def build_slice_cache(
    rows: Sequence[VolumeRow],
    out_folder: Path,
    *,
    root: Path,
    channels: Sequence[str],
    lesion_channels: Sequence[str],
    label_values: Mapping[str, int] | None,
    pv_tolerance: float,
    size: Sequence[int],
    min_brain_fraction: float,
    every: int,
) -> dict[str, int]:
    """Validate every volume and write the cache arrays and tables into `out_folder`.

    Every row is validated before anything is written, so a bad row leaves nothing behind
    (the caller builds into a temporary folder). Returns counts for the stage manifest.
    """
    unknown = [c for c in lesion_channels if c not in channels]
    if unknown:
        raise BrainspadeError(f"data.lesion_channels {unknown} are not in data.channels {list(channels)}; fix the config")
    background = background_channel(channels)
    lesion_ids = [list(channels).index(c) for c in lesion_channels]
    images, pv_maps, image_rows, label_rows = [], [], [], []
    label_index_of: dict[tuple[Path, int], int] = {}
    loaded_labels: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    for row in progress(rows, desc="prepare-data", unit="volume"):
        image, image_affine = load_image(row.image)
        if row.labels not in loaded_labels:
            loaded_labels.clear()  # rows sharing a labels file are adjacent in practice; keep memory flat
            loaded_labels[row.labels] = load_pv_maps(row.labels, channels, label_values, pv_tolerance)
        pv, labels_affine = loaded_labels[row.labels]
        check_same_grid(row.image, row.labels, image.shape, pv.shape[:3], image_affine, labels_affine)
        brain = pv[..., background] < 0.5
        depth = image.shape[2]
        for z in brain_slice_indices(brain, min_brain_fraction, every):
            key = (row.labels, int(z))
            position = float(z) / max(depth - 1, 1)
            if key not in label_index_of:
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
            label_index = label_index_of[key]
            image_slice = crop_or_pad(image[:, :, z], size, fill=float(image.min()))
            brain_slice = crop_or_pad(brain[:, :, z], size, fill=False)
            images.append(zscore_in_brain(image_slice, brain_slice).astype(np.float16))
            image_rows.append(
                {
                    "label_index": label_index,
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
    np.save(out_folder / "pv_maps.npy", np.stack(pv_maps))
    write_table(out_folder / "images.csv", IMAGE_COLUMNS, image_rows)
    write_table(out_folder / "labels.csv", [*LABEL_COLUMNS, *[f"lesion_{c}" for c in lesion_channels]], label_rows)
    schema = {"channels": list(channels), "lesion_channels": list(lesion_channels), "size": list(size)}
    (out_folder / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return {"image_slices": len(images), "label_slices": len(pv_maps), "volumes": len(rows)}
