"""The user data layout: a folder with manifest.csv, one row per image volume.

Columns: subject, dataset, modality, split, image, labels (paths relative to the folder).
Several rows may share one labels file (e.g. T1 and FLAIR of one subject). An empty `labels`
marks an image used only as a style image (a target site's scan): such a row must be in the
train split, since a dev or test image is scored against its labels. An optional
`label_format` column gives a row's label format (empty: `data.label_format`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from brainspade.data.label_sources import LABEL_FORMATS
from brainspade.errors import BrainspadeError

MANIFEST_COLUMNS = ("subject", "dataset", "modality", "split", "image", "labels")
SPLITS = ("train", "dev", "test")  # dev: labelled subjects for choosing settings


@dataclass(frozen=True)
class VolumeRow:
    """One manifest row, with its paths resolved inside the data root."""

    subject: str
    dataset: str
    modality: str
    split: str
    image: Path
    labels: Path | None  # None: an unlabelled image (a style image only)
    line: int  # line number in manifest.csv, for error messages
    label_format: str | None = None  # the optional label_format column; None: data.label_format


def read_manifest(root: Path) -> list[VolumeRow]:
    """Read and check root/manifest.csv (columns, splits, paths inside root).

    Files are not opened here; `validate_volume` checks their content.
    """
    path = root / "manifest.csv"
    if not path.is_file():
        raise BrainspadeError(f"{path}: manifest not found; set data.root to a folder with manifest.csv (see README)")
    try:  # utf-8-sig: spreadsheet programs save UTF-8 with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise BrainspadeError(f"{path}: not UTF-8 (byte {error.start} cannot be decoded); save the manifest as UTF-8") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BrainspadeError(f"{path}: missing column(s) {', '.join(missing)}; the header must be {','.join(MANIFEST_COLUMNS)}")
    rows = [_parse_row(root, path, line, record) for line, record in enumerate(reader, start=2)]
    if not rows:
        raise BrainspadeError(f"{path}: no rows; add one row per image volume")
    return rows


def _parse_row(root: Path, manifest: Path, line: int, record: dict[str, str]) -> VolumeRow:
    values = {c: (record.get(c) or "").strip() for c in MANIFEST_COLUMNS}
    empty = [c for c, v in values.items() if not v and c != "labels"]
    if empty:
        raise BrainspadeError(f"{manifest}:{line}: empty {', '.join(empty)}; every column but labels needs a value")
    if values["split"] not in SPLITS:
        raise BrainspadeError(f"{manifest}:{line}: split {values['split']!r} must be one of {', '.join(SPLITS)}")
    if not values["labels"] and values["split"] != "train":
        raise BrainspadeError(f"{manifest}:{line}: {values['split']} image {values['image']} has no labels and cannot be "
                              "scored; give its labels file, or make it split=train (a style image only)")
    label_format = (record.get("label_format") or "").strip() or None
    if label_format is not None and label_format not in LABEL_FORMATS:
        raise BrainspadeError(f"{manifest}:{line}: label_format {label_format!r} must be one of "
                              f"{', '.join(LABEL_FORMATS)} (or empty: data.label_format)")
    return VolumeRow(
        subject=values["subject"],
        dataset=values["dataset"],
        modality=values["modality"],
        split=values["split"],
        image=_inside(root, manifest, line, values["image"]),
        labels=_inside(root, manifest, line, values["labels"]) if values["labels"] else None,
        line=line,
        label_format=label_format,
    )


def _inside(root: Path, manifest: Path, line: int, relative: str) -> Path:
    """Resolve a manifest path and refuse one that leaves the data root (absolute or ../)."""
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BrainspadeError(f"{manifest}:{line}: path {relative!r} leaves the data root; use a path inside {root}")
    return resolved
