"""NIfTI reading with errors a user can act on (file name + problem + fix, one line)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainspade.errors import BrainspadeError


def load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume in RAS+ orientation as float32, returning (data, affine).

    Raises:
        BrainspadeError: missing file, or a file nibabel cannot read (corrupt or truncated).
    """
    if not path.is_file():
        raise BrainspadeError(f"{path}: file not found; fix the path in manifest.csv")
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ...
        raise BrainspadeError(
            f"{path}: not a readable NIfTI file ({type(error).__name__}: {str(error).splitlines()[0][:80]}); "
            "re-export or replace it"
        ) from error
    return data, image.affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Save float data as NIfTI; callers wrap this in `atomic_path` for atomicity."""
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
