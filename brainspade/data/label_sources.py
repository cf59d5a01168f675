"""Label files as labs have them, read into PV maps (X, Y, Z, C) over the schema's channels.

Formats (`data.label_format`, or a `label_format` column of manifest.csv per row):

- `pv`: 4D PV maps, or an integer volume with `data.label_values` (the original layout);
- `freesurfer` / `synthseg`: a FreeSurfer `aseg` / `aparc+aseg` (`.mgz` or NIfTI) or a SynthSeg
  label map, grouped by tissue (`brainspade.data.freesurfer`) into one-hot PV maps;
- `synthseg_posteriors`: SynthSeg's `--post` file, one channel per label, summed by tissue: true PV maps;
- `fast`: FSL FAST's `*_pve_0/1/2` (CSF, GM, WM; name any of the three), background = what they leave.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainspade.data.freesurfer import SYNTHSEG_POSTERIOR_CODES, group_label_map, group_posteriors
from brainspade.data.nifti import load_canonical
from brainspade.data.volumes import check_same_grid, load_pv_maps
from brainspade.errors import BrainspadeError

LABEL_FORMATS = ("pv", "freesurfer", "synthseg", "synthseg_posteriors", "fast")
FAST_TISSUES = ("csf", "gm", "wm")  # pve_0, pve_1, pve_2
_FAST_NAME = re.compile(r"^(?P<stem>.*_pve_)[012](?P<suffix>\.nii(\.gz)?)$")


@dataclass(frozen=True)
class LabelReading:
    """How label files become PV maps: the schema and the format-specific mappings."""

    channels: tuple[str, ...]
    label_values: Mapping[str, int] | None = None  # `pv` with integer volumes
    tolerance: float = 1e-3  # how far PV sums may stray from 1
    posterior_codes: tuple[int, ...] = SYNTHSEG_POSTERIOR_CODES  # FreeSurfer code of each --post channel
    extra_codes: Mapping[int, str] = field(default_factory=dict)  # further FreeSurfer codes -> channel names


def load_labels(path: Path, label_format: str, reading: LabelReading) -> tuple[np.ndarray, np.ndarray]:
    """The label file `path` in `label_format` as PV maps (X, Y, Z, C) summing to 1, plus its RAS affine."""
    channels = list(reading.channels)
    if label_format == "pv":
        return load_pv_maps(path, channels, reading.label_values, reading.tolerance)
    if label_format in ("freesurfer", "synthseg"):
        data, affine = _load_finite(path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3 or not np.allclose(data, np.round(data)):
            raise BrainspadeError(f"{path}: a {label_format} label map must be a 3D volume of integer codes "
                                  f"(got shape {data.shape}); for SynthSeg --post files use label_format=synthseg_posteriors")
        return group_label_map(np.round(data).astype(np.int64), channels, reading.extra_codes, str(path)), affine
    if label_format == "synthseg_posteriors":
        data, affine = _load_finite(path)
        codes = list(reading.posterior_codes)
        if data.ndim != 4 or data.shape[3] != len(codes):
            raise BrainspadeError(f"{path}: SynthSeg posteriors need {len(codes)} channels (one per code of "
                                  f"data.posterior_codes), got shape {data.shape}; set data.posterior_codes to its labels")
        return normalised(group_posteriors(np.clip(data, 0, None), codes, channels, reading.extra_codes, str(path))), \
            affine
    if label_format == "fast":
        return _load_fast(path, channels)
    raise BrainspadeError(f"{path}: label format {label_format!r} is unknown; use one of {', '.join(LABEL_FORMATS)}")


def _load_finite(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, affine = load_canonical(path)
    if not np.isfinite(data).all():
        raise BrainspadeError(f"{path}: labels contain NaN or infinite values; fix the label file")
    return data, affine


def normalised(pv: np.ndarray) -> np.ndarray:
    """Channels scaled to sum to 1 (voxels with nothing become background, channel 0)."""
    empty = pv.sum(axis=-1) <= 1e-6
    pv[empty, 0] = 1.0
    return pv / pv.sum(axis=-1, keepdims=True)


def fast_files(path: Path) -> list[Path]:
    """The three FAST files `*_pve_0/1/2.nii[.gz]` named by any one of them."""
    match = _FAST_NAME.match(path.name)
    if match is None:
        raise BrainspadeError(f"{path}: a FAST labels entry must name one of its *_pve_0/1/2.nii.gz files")
    return [path.with_name(f"{match['stem']}{index}{match['suffix']}") for index in range(3)]


def _load_fast(path: Path, channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    missing = [t for t in FAST_TISSUES if t not in channels]
    if missing:
        raise BrainspadeError(f"{path}: FAST gives CSF, GM and WM but data.channels {list(channels)} lacks {missing}")
    files = fast_files(path)
    pv = None
    affine = None
    for tissue, file in zip(FAST_TISSUES, files, strict=True):
        fraction, file_affine = _load_finite(file)
        if fraction.ndim != 3:
            raise BrainspadeError(f"{file}: a FAST pve file must be 3D, got shape {fraction.shape}")
        if pv is None:
            pv = np.zeros((*fraction.shape, len(channels)), dtype=np.float32)
            affine = file_affine
        check_same_grid(files[0], file, pv.shape[:3], fraction.shape, affine, file_affine)
        pv[..., list(channels).index(tissue)] = np.clip(fraction, 0, 1)
    background = list(channels).index("background") if "background" in channels else 0
    pv[..., background] = np.clip(1.0 - pv.sum(axis=-1), 0, 1)
    return normalised(pv), affine
