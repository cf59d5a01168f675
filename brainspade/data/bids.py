"""manifest.csv for a small BIDS-style folder, so nobody writes it by hand.

Layout read (sessions allowed)::

    root/sub-01/anat/sub-01_T1w.nii.gz                  images: *_T1w, *_T2w, *_FLAIR (.nii or .nii.gz)
    root/derivatives/<pipeline>/sub-01/.../<labels>     one label file per subject (e.g. *_aparc+aseg.mgz)
    root/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz      with sessions: one label file per session, found
    root/derivatives/<pipeline>/sub-01/ses-1/.../<labels>  below that session's folder

Every image of a subject (or of a session) shares its label file (T1 and FLAIR of one visit are in one
physical space; two visits are not, so a session is never paired with another session's labels). Subject
and session labels are alphanumeric in any script, as BIDS has them. Subjects are sorted; the last
`test_fraction` of them form the test split, every session of a subject in the same split. With sessions,
a row's subject is `sub-01_ses-1` (one image per subject, modality and split in a manifest).
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
# BIDS labels are alphanumeric in any script ([^\W_]: a word character that is not "_").
_IMAGE_NAME = re.compile(r"^(?P<subject>sub-[^\W_]+)(?:_(?P<session>ses-[^\W_]+))?(?:_[^\W_]+-[^\W_]+)*"
                         r"_(?P<suffix>T1w|T2w|FLAIR)\.nii(\.gz)?$")


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
    candidates = sorted(p for p in root.glob("sub-*/**/anat/*") if p.name.endswith((".nii", ".nii.gz"))
                        and derivatives not in p.parents)
    images = [p for p in candidates if _IMAGE_NAME.match(p.name)]
    for path in candidates:  # a scan of a known modality is never dropped without a word
        if path not in images and re.search(r"_(T1w|T2w|FLAIR)\.nii(\.gz)?$", path.name):
            raise BrainspadeError(f"{path}: not a BIDS name (sub-<label>[_ses-<label>][_<key>-<value>...]_T1w.nii.gz, "
                                  "labels alphanumeric); rename it")
    if not images:
        raise BrainspadeError(f"{root}: no sub-*/anat/*_T1w.nii.gz (or _T2w / _FLAIR) images; is this a BIDS folder?")
    subjects = sorted({_IMAGE_NAME.match(p.name)["subject"] for p in images})
    n_test = round(len(subjects) * layout.test_fraction) if len(subjects) > 1 else 0
    test = set(subjects[len(subjects) - n_test:]) if n_test else set()
    visits = sorted({(m["subject"], m["session"]) for m in map(_IMAGE_NAME.match, (p.name for p in images))},
                    key=lambda visit: (visit[0], visit[1] or ""))
    sessions = {subject for subject, session in visits if session}
    labels = {visit: _label_file(derivatives, *visit, layout.labels, visit[0] in sessions) for visit in visits}
    rows = []
    for image in images:
        match = _IMAGE_NAME.match(image.name)
        subject, session = match["subject"], match["session"]
        rows.append({"subject": f"{subject}_{session}" if session else subject, "dataset": layout.dataset,
                     "modality": MODALITY_SUFFIXES[match["suffix"]], "split": "test" if subject in test else "train",
                     "image": str(image.relative_to(root)), "labels": str(labels[subject, session].relative_to(root)),
                     "label_format": layout.label_format})
    return rows


def _label_file(derivatives: Path, subject: str, session: str | None, pattern: str, has_sessions: bool) -> Path:
    """The one label file of a subject, or of one session of a subject that has sessions (never another session's)."""
    if not derivatives.is_dir():
        raise BrainspadeError(f"{derivatives}: no derivatives folder; set derivatives= to the folder with the labels")
    found = sorted({p for p in derivatives.glob(f"**/{subject}/**/{pattern}") if p.is_file()})
    visit = subject
    if has_sessions:
        visit = f"{subject} {session}" if session else f"{subject} (no session)"
        # A session's labels sit below its own folder or carry its label in their name.
        found = [p for p in found if (session in p.relative_to(derivatives).parts or f"_{session}_" in p.name)
                 ] if session else [p for p in found if not any(part.startswith("ses-") for part in
                                                                 p.relative_to(derivatives).parts)]
    if len(found) == 1:
        return found[0]
    if not found:
        other = "" if not has_sessions else (
            "; with sessions each session needs its own label file below derivatives/<pipeline>/"
            f"{subject}/{session or 'ses-X'}/ (another visit's labels are not in this scan's space)")
        raise BrainspadeError(f"{derivatives}: no file matching labels={pattern!r} for {visit}{other}")
    listed = ", ".join(str(p.relative_to(derivatives)) for p in found[:3])
    raise BrainspadeError(f"{derivatives}: {len(found)} files ({listed}) match labels={pattern!r} for {visit}; each "
                          "needs exactly one (narrow the pattern, e.g. labels='*_desc-aseg.nii.gz')")


def manifest_text(rows: list[dict[str, str]]) -> str:
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=[*MANIFEST_COLUMNS, "label_format"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return handle.getvalue()
