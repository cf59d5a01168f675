"""NIfTI reading with errors a user can act on (file name + problem + fix, one line).

A header is checked before its voxels are allocated: a 1 KB file whose header claims 2000^3 voxels would
otherwise take gigabytes before nibabel finds the data missing.
"""

from __future__ import annotations

import os
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
    image = load_header(path)
    try:
        image = nib.as_closest_canonical(image)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ...
        raise BrainspadeError(
            f"{path}: not a readable NIfTI file ({type(error).__name__}: {str(error).splitlines()[0][:80]}); "
            "re-export or replace it"
        ) from error
    return data, image.affine


# deflate never compresses more than about 1032:1, so a gzipped file this much smaller than its voxels lies.
_MAX_GZIP_RATIO = 1100
_SHARE_OF_AVAILABLE = 0.5


def load_header(path: Path):
    """The image at `path` with its header read and checked, no voxel read yet (nibabel loads lazily).

    Raises:
        BrainspadeError: an unreadable header, or one asking for more voxels than the file holds or than half
        the memory this machine has available as float32.
    """
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ...
        raise BrainspadeError(
            f"{path}: not a readable NIfTI file ({type(error).__name__}: {str(error).splitlines()[0][:80]}); "
            "re-export or replace it"
        ) from error
    check_header(path, image.shape, np.dtype(image.get_data_dtype()).itemsize, _data_offset(image))
    return image


def check_header(path: Path, shape: tuple[int, ...], itemsize: int, offset: int) -> None:
    """Refuse a header whose voxels the file cannot hold or this machine cannot allocate as float32."""
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    stored = voxels * itemsize + offset
    size = path.stat().st_size
    compressed = path.name.endswith((".gz", ".mgz"))
    if stored > size * (_MAX_GZIP_RATIO if compressed else 1):
        raise BrainspadeError(f"{path}: its header claims {'x'.join(map(str, shape))} voxels ({stored / 2**20:.0f} "
                              f"MiB) but the file holds {size / 2**20:.1f} MiB; the file is truncated or its header "
                              "is wrong: re-export it")
    need, available = voxels * 4, available_memory_bytes()
    if need > available * _SHARE_OF_AVAILABLE:
        raise BrainspadeError(f"{path}: its {'x'.join(map(str, shape))} voxels need {need / 2**30:.1f} GiB as float32 "
                              f"and this machine has {available / 2**30:.1f} GiB available; crop or resample the scan "
                              "first")


def available_memory_bytes() -> int:
    """Memory this machine can still give (MemAvailable on Linux; the free physical pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _data_offset(image) -> int:
    """Bytes before the voxels in the file: NIfTI's vox_offset, MGH's 284-byte header."""
    header = image.header
    if "vox_offset" in header:
        return int(header["vox_offset"])
    return 284 if isinstance(image, nib.MGHImage) else 0


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Save float data as NIfTI; callers wrap this in `atomic_path` for atomicity."""
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
