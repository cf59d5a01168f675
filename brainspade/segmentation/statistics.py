"""Paired tests between two models evaluated on the same test volumes (scipy)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedTest:
    """Two-sided p-values of a paired t-test and a Wilcoxon signed-rank test over n volume pairs."""

    t_test_p: float
    wilcoxon_p: float
    n: int


def paired_tests(first: Sequence[float], second: Sequence[float]) -> PairedTest:
    """Compare per-volume values of two models on the same volumes (same order).

    Pairs with a NaN on either side are dropped. With fewer than two pairs there is no test
    (NaN). When every difference is zero the models agree on every volume: p = 1 for both
    tests (scipy itself would return NaN or refuse).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must match: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2:
        return PairedTest(float("nan"), float("nan"), n)
    differences = a - b
    if np.all(differences == 0):
        return PairedTest(1.0, 1.0, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant differences: t = inf, p = 0 is right
        t_p = float(stats.ttest_rel(a, b, alternative="two-sided").pvalue)
        wilcoxon_p = float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)
    return PairedTest(t_p, wilcoxon_p, n)
