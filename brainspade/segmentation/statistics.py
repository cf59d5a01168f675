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


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-volume differences (first − second) with its bootstrap 95% confidence interval."""

    mean: float
    low: float
    high: float
    n: int


def paired_difference(first: Sequence[float], second: Sequence[float], seed: int = 0,
                      resamples: int = 9999) -> PairedDifference:
    """The paired mean difference and a BCa bootstrap 95% CI over volumes (scipy.stats.bootstrap).

    Pairs with a NaN on either side are dropped; fewer than two pairs give NaN. A fixed seed
    makes the interval of a report reproducible.
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must match: {a.shape} vs {b.shape}")
    differences = (a - b)[~(np.isnan(a) | np.isnan(b))]
    n = int(differences.size)
    if n < 2:
        return PairedDifference(float(differences.mean()) if n else float("nan"), float("nan"), float("nan"), n)
    mean = float(differences.mean())
    if np.all(differences == differences[0]):  # no spread: every resample has this mean
        return PairedDifference(mean, mean, mean, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on degenerate small samples and falls back to NaN
        interval = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=0.95,
                                   method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    low, high = float(interval.low), float(interval.high)
    if np.isnan(low) or np.isnan(high):  # BCa undefined (e.g. n = 2): the percentile interval
        interval = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=0.95,
                                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return PairedDifference(mean, low, high, n)
