"""Which rows of the slice cache a piece of work reads: the instrument of the data-access test.

Every stage reads the cache through `SliceCache.open`; while `recording()` is active, the caches it opens hold
their image and PV-map arrays behind a proxy that notes the rows each read touches (item access, fancy indexing,
or the whole array). The rows are then named by data set and split, so a test can ask whether a piece of work
read a target site's test image or a target label.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from brainspade.data.slice_cache import SliceCache


class RecordingArray:
    """A read-only array that notes which first-axis rows are read."""

    def __init__(self, array: np.ndarray, rows: set[int]):
        self._array, self._rows = array, rows

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        self._rows.update(np.arange(len(self._array))[first].ravel().tolist())
        return self._array[key]

    def __array__(self, dtype=None, copy=None):
        self._rows.update(range(len(self._array)))
        return np.asarray(self._array, dtype=dtype)

    def __len__(self) -> int:
        return len(self._array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim


@dataclass
class CacheReads:
    """Rows read per phase: image rows and PV-map rows, with the cache's tables to name them."""

    images: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    labels: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    image_table: dict = field(default_factory=dict)
    label_table: dict = field(default_factory=dict)
    phase: str = "unnamed"

    def read(self, kind: str, phase: str, datasets: list[str], splits: list[str]) -> list[str]:
        """'dataset/split/subject' of every row of `kind` (images | labels) read in `phase` from those data sets
        and splits."""
        rows = self.images if kind == "images" else self.labels
        table = self.image_table if kind == "images" else self.label_table
        return sorted({f"{table['dataset'][i]}/{table['split'][i]}/{table['subject'][i]}" for i in rows[phase]
                       if table["dataset"][i] in datasets and table["split"][i] in splits})


@contextlib.contextmanager
def recording(reads: CacheReads) -> Iterator[CacheReads]:
    """Record the cache rows every `SliceCache.open` within the block reads, under `reads.phase`."""
    original = SliceCache.open.__func__

    def open_recorded(cls, folder):
        cache = original(cls, folder)
        reads.image_table, reads.label_table = cache.image_table, cache.label_table
        cache.images = RecordingArray(cache.images, reads.images[reads.phase])
        cache.pv_maps = RecordingArray(cache.pv_maps, reads.labels[reads.phase])
        return cache

    SliceCache.open = classmethod(open_recorded)
    try:
        yield reads
    finally:
        SliceCache.open = classmethod(original)
