"""Atomic file and folder writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, temp_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path; rename it onto `path` only if the block succeeds.

    The temporary file lives beside `path`, or in `temp_dir` (same file system) when readers
    list the target folder and must not see it. Its name keeps the final suffix(es) so that
    writers that infer the format from the name (`.nii.gz`, `.npy`) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(temp_dir) if temp_dir is not None else path.parent
    temp_dir.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    # The pid in the name lets `remove_stale_temporaries` tell a dead writer's leftovers from a live one's.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=f".tmp{suffix}", dir=temp_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the final file must honour the umask
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path` that replaces `path` only if the block succeeds.

    An interrupted or failing build leaves any earlier `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; collaborators must be able to read the result
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only swap it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files that a killed writer (kill -9 skips `finally`) left below `folder`.

    Files of writers that are still running (another shard on this machine) are kept.
    """
    removed = 0
    for path in Path(folder).rglob(".*.pid*.tmp*"):
        match = re.search(r"\.pid(\d+)\.", path.name)
        if path.is_file() and match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
