"""manifest.csv for a small BIDS-style folder, so nobody writes it by hand.

Layout read (sessions allowed)::

    root/sub-01/anat/sub-01_T1w.nii.gz                  images: *_T1w, *_T2w, *_FLAIR (.nii or .nii.gz)
    root/derivatives/<pipeline>/sub-01/.../<labels>     one label file per subject (e.g. *_aparc+aseg.mgz)

Every image of a subject shares that subject's label file (T1 and FLAIR of one subject are in one
physical space). Subjects are sorted; the last `test_fraction` of them form the test split.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from brainspade.data.manifest import MANIFEST_COLUMNS
from brainspade.errors import BrainspadeError

MODALITY_SUFFIXES = {"T1w": "T1", "T2w": "T2", "FLAIR": "FLAIR"}
_IMAGE_NAME = re.compile(r"^(?P<subject>sub-[A-Za-z0-9]+).*_(?P<suffix>T1w|T2w|FLAIR)\.nii(\.gz)?$")


@dataclass(frozen=True)
class BidsLayout:
    """Where the images and label files are and how the rows are labelled."""

    root: Path
    derivatives: str = "derivatives"  # folder inside root holding the label files
    labels: str = "*aparc+aseg.mgz"  # glob of one subject's label file below derivatives/**/sub-XX/
    label_format: str = "freesurfer"
    dataset: str = "mysite"
    test_fraction: float = 0.2


def manifest_rows(layout: BidsLayout) -> list[dict[str, str]]:
    """One manifest row per image, paths relative to the root."""
    root = layout.root
    if not root.is_dir():
        raise BrainspadeError(f"bids_root={root}: folder not found; point it at the folder holding sub-*/")
    derivatives = root / layout.derivatives
    images = sorted(p for p in root.glob("sub-*/**/anat/*") if _IMAGE_NAME.match(p.name)
                    and derivatives not in p.parents)
    if not images:
        raise BrainspadeError(f"{root}: no sub-*/anat/*_T1w.nii.gz (or _T2w / _FLAIR) images; is this a BIDS folder?")
    subjects = sorted({_IMAGE_NAME.match(p.name)["subject"] for p in images})
    n_test = round(len(subjects) * layout.test_fraction) if len(subjects) > 1 else 0
    test = set(subjects[len(subjects) - n_test:]) if n_test else set()
    labels = {subject: _label_file(derivatives, subject, layout.labels) for subject in subjects}
    rows = []
    for image in images:
        match = _IMAGE_NAME.match(image.name)
        subject = match["subject"]
        rows.append({"subject": subject, "dataset": layout.dataset, "modality": MODALITY_SUFFIXES[match["suffix"]],
                     "split": "test" if subject in test else "train", "image": str(image.relative_to(root)),
                     "labels": str(labels[subject].relative_to(root)), "label_format": layout.label_format})
    return rows


def _label_file(derivatives: Path, subject: str, pattern: str) -> Path:
    if not derivatives.is_dir():
        raise BrainspadeError(f"{derivatives}: no derivatives folder; set derivatives= to the folder with the labels")
    found = sorted({p for p in derivatives.glob(f"**/{subject}/**/{pattern}") if p.is_file()})
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(str(p.relative_to(derivatives)) for p in found[:3])})"
        raise BrainspadeError(f"{derivatives}: {what} file(s) matching labels={pattern!r} for {subject}; "
                              "each subject needs exactly one (narrow the pattern, e.g. labels='*_desc-aseg.nii.gz')")
    return found[0]


def manifest_text(rows: list[dict[str, str]]) -> str:
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=[*MANIFEST_COLUMNS, "label_format"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return handle.getvalue()
