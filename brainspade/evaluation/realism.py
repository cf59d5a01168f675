"""Image realism: FID and KID between two sets of feature vectors, with a real-vs-real floor beside each."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import FIDMetric, MMDMetric


def fid(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Fréchet distance (Heusel et al. 2017) of two feature sets (N, D), with MONAI's FIDMetric."""
    return float(FIDMetric()(candidate.double(), reference.double()))


def kid(reference: torch.Tensor, candidate: torch.Tensor, subset_size: int, subsets: int, seed: int
        ) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and sd over random subsets.

    Subsets hold `subset_size` slices (the usual 1000), at most half of the smaller set.

    KID is the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³. MONAI's
    MMDMetric computes the unbiased MMD² of a *linear* kernel on mapped inputs, and a cubic kernel
    has no small explicit feature map, so the kernel sums are written here (as in the paper).
    """
    size = max(2, min(subset_size, len(reference) // 2, len(candidate) // 2))  # at most half a set: subsets differ
    rng = np.random.default_rng(seed)
    dims = reference.shape[1]
    values = []
    for _ in range(subsets):
        x = reference[rng.choice(len(reference), size, replace=False)].double()
        y = candidate[rng.choice(len(candidate), size, replace=False)].double()
        k_xx, k_yy, k_xy = ((a @ b.T / dims + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = size * (size - 1)
        values.append(float((k_xx.sum() - k_xx.diagonal().sum()) / off_diagonal
                            + (k_yy.sum() - k_yy.diagonal().sum()) / off_diagonal - 2 * k_xy.mean()))
    return float(np.mean(values)), float(np.std(values))


def linear_mmd(reference: torch.Tensor, candidate: torch.Tensor, seed: int) -> float:
    """Unbiased MMD² with a linear kernel on the features, as MONAI's MMDMetric defines it.

    MMDMetric takes two sets of one size: the larger set is cut to a seeded random subset.
    """
    size = min(len(reference), len(candidate))
    rng = np.random.default_rng(seed)
    pick = [torch.from_numpy(np.sort(rng.choice(len(s), size, replace=False))) for s in (reference, candidate)]
    return float(MMDMetric()(reference[pick[0]].double(), candidate[pick[1]].double()))


def realism_scores(reference: torch.Tensor, synthetic: torch.Tensor, real: torch.Tensor, subset_size: int,
                   subsets: int, seed: int) -> dict:
    """FID, KID and MONAI's linear MMD of synthetic vs reference features, and of real vs reference (the floor).

    `synthetic` and `real` should hold the same number of slices: FID is biased by the set size.
    """
    scores = {"n_reference": len(reference), "n_synthetic": len(synthetic), "n_real": len(real)}
    for name, candidate in (("synthetic", synthetic), ("real", real)):
        kid_mean, kid_sd = kid(reference, candidate, subset_size, subsets, seed)
        scores[name] = {"fid": fid(reference, candidate), "kid": kid_mean, "kid_sd": kid_sd,
                        "mmd_linear": linear_mmd(reference, candidate, seed)}
    return scores
