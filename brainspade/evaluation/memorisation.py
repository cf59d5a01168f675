"""Memorisation: is each sample closer to a training slice than new real slices are?

For every synthetic sample, the distance to its nearest training example (PV maps, or images in
feature space) is compared with the same distance of held-out real slices (test split, never seen
by a generator). A generator that copies training slices puts its samples closer to the training
set than any held-out slice; one that makes new slices does not (a fresh slice beats every one of
n held-out slices with chance about 1 / (n + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Nearest:
    distances: np.ndarray  # (N,) distance of each query to its nearest training example
    indices: np.ndarray  # (N,) position of that example in the training set


def nearest(queries: np.ndarray, training: np.ndarray, rows: np.ndarray | None = None, chunk: int = 512) -> Nearest:
    """Euclidean nearest neighbour among `training[rows]` (all rows when None) of each query (N, ...), flattened.

    `training` may be a memory-mapped float16 array: its rows are read in chunks, never held whole.
    Indices are positions in `rows`.
    """
    rows = np.arange(len(training)) if rows is None else np.asarray(rows)
    query = torch.from_numpy(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
    best = torch.full((len(query),), float("inf"))
    index = torch.zeros(len(query), dtype=torch.long)
    for start in range(0, len(rows), chunk):
        picked = np.asarray(training[rows[start : start + chunk]], dtype=np.float32)
        block = torch.from_numpy(picked.reshape(-1, query.shape[1]))
        value, position = torch.cdist(query, block).min(dim=1)
        better = value < best
        best[better], index[better] = value[better], position[better] + start
    return Nearest(best.numpy().astype(np.float64), index.numpy())


def memorisation_scores(synthetic: Nearest, heldout: Nearest, flag_share: float) -> dict:
    """The share of samples closer to the training set than the closest held-out slice, and the flag."""
    threshold = float(heldout.distances.min())
    share = float((synthetic.distances < threshold).mean())
    return {
        "threshold": threshold,
        "share_closer_than_heldout": share,
        "expected_share_of_new_slices": 1.0 / (len(heldout.distances) + 1),
        "flagged": share > flag_share,
        "synthetic_median_distance": float(np.median(synthetic.distances)),
        "heldout_median_distance": float(np.median(heldout.distances)),
        "n_synthetic": len(synthetic.distances),
        "n_heldout": len(heldout.distances),
    }
