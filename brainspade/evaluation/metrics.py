"""Every score of brainspade in one place: the formulas that turn images, label maps or features into numbers.

Callers (the trainings' evaluations, `evaluate-generators`, the segmentation experiments) gather the
arrays and write the reports; here are only the scores:
- overlap of label maps: Dice, precision and recall per volume, Dice of PV maps or label ids pooled
  over slices; the through-plane streak rate of a volume segmented slice by slice;
- label statistics (tissue volumes, lesion rates and sizes, components and holes) and their
  Wasserstein distances;
- images: paired fidelity (SSIM, PSNR, MAE), diversity (MS-SSIM), intensities and levels per tissue;
- realism of feature sets: FID, KID, linear MMD;
- memorisation: each sample's nearest training example against held-out real slices'.

Undefined overlap values are NaN (None in `label_dice`), never a made-up 0 or 1: Dice when neither
the prediction nor the ground truth has the class, precision when nothing was predicted, recall
when the class is absent from the ground truth. Summaries and tests skip them. The overlap scores
are MONAI's confusion-matrix metrics (Dice is the F1 score). MONAI's DiceMetric is not used: it
scores an empty ground truth NaN (ignore_empty) or 1/0, not "NaN only when both are empty", which
the F1 score gives as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import (
    FIDMetric,
    MMDMetric,
    MultiScaleSSIMMetric,
    SSIMMetric,
    compute_confusion_matrix_metric,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot
from scipy import ndimage
from scipy.stats import wasserstein_distance

from brainspade.data.slicing import background_channel

# Overlap of label maps


def confusion(prediction: np.ndarray, truth: np.ndarray, label: int) -> torch.Tensor:
    """MONAI's (tp, fp, tn, fn) of one label id, pooled over a whole volume.

    MONAI counts per batch item in float32; counting per slice (first axis) and summing in
    float64 keeps the counts exact for any volume size.
    """
    rows = prediction.shape[0] if prediction.ndim > 1 else 1
    predicted = torch.from_numpy(np.asarray(prediction == label, dtype=np.float32)).reshape(rows, 1, -1)
    true = torch.from_numpy(np.asarray(truth == label, dtype=np.float32)).reshape(rows, 1, -1)
    return get_confusion_matrix(predicted, true).double().sum(dim=0)


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice overlap of one label id between two label arrays of the same shape (MONAI's F1 score)."""
    return float(compute_confusion_matrix_metric("f1 score", confusion(prediction, truth, label)))


def streak_rate(labels: np.ndarray) -> float:
    """Through-plane stripes of a label volume stacked from axial slices: the share of labelled voxels whose label
    differs from both axial neighbours (last axis) while those two agree."""
    middle, below, above = labels[:, :, 1:-1], labels[:, :, :-2], labels[:, :, 2:]
    isolated = (middle != below) & (below == above) & (middle > 0)
    return float(isolated.sum() / max(1, int((middle > 0).sum())))


def precision(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of predicted voxels of the label that are truly that label."""
    return float(compute_confusion_matrix_metric("precision", confusion(prediction, truth, label)))


def recall(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Share of true voxels of the label that were predicted as that label (sensitivity)."""
    return float(compute_confusion_matrix_metric("sensitivity", confusion(prediction, truth, label)))


def volume_metrics(
    prediction: np.ndarray, truth: np.ndarray, classes: dict[str, int], lesion_metrics: bool
) -> list[dict[str, float | str]]:
    """One row per class: {'class', 'dice'} plus 'precision' and 'recall' when lesion_metrics."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    rows = []
    for name, label in classes.items():
        counts = confusion(prediction, truth, label)
        row: dict[str, float | str] = {"class": name, "dice": float(compute_confusion_matrix_metric("f1 score", counts))}
        if lesion_metrics:
            row["precision"] = float(compute_confusion_matrix_metric("precision", counts))
            row["recall"] = float(compute_confusion_matrix_metric("sensitivity", counts))
        rows.append(row)
    return rows


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the non-NaN values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), sd, int(finite.size)


def label_dice(predicted_pv: torch.Tensor, real_pv: torch.Tensor, channels: Sequence[str]) -> dict[str, float | None]:
    """Dice of the argmax labels per channel, pooled over all slices (None where a channel is absent in both).

    (N, C, H, W) PV maps. MONAI's F1 score (= Dice, undefined where neither map has the channel)
    of the confusion counts summed over slices; MONAI counts per slice in float32, the sum is in
    float64 so that the pooled counts stay exact.
    """
    num_channels = len(channels)
    predicted = one_hot(predicted_pv.argmax(dim=1, keepdim=True), num_channels, dtype=torch.float32)
    real = one_hot(real_pv.argmax(dim=1, keepdim=True), num_channels, dtype=torch.float32)
    counts = get_confusion_matrix(predicted, real).double().sum(dim=0)
    scores = compute_confusion_matrix_metric("f1 score", counts).tolist()
    return {name: None if score != score else score for name, score in zip(channels, scores, strict=True)}


def consistency_dice(predicted: np.ndarray, labels: np.ndarray, channels: Sequence[str]) -> dict[str, float | None]:
    """Dice per channel of predicted vs generating label ids (N, H, W), pooled over slices (None: absent in both)."""
    def as_one_hot(ids: np.ndarray) -> torch.Tensor:
        return one_hot(torch.from_numpy(ids.astype(np.int64))[:, None], len(channels), dim=1)

    return label_dice(as_one_hot(predicted), as_one_hot(labels), channels)


def mean_dice(scores: dict[str, float | None], classes: Sequence[str]) -> float | None:
    """Mean Dice over the given classes that are scored."""
    values = [scores[c] for c in classes if scores.get(c) is not None]
    return float(np.mean(values)) if values else None


# Label statistics: real vs generated label maps


def tissue_volumes(pv_maps: torch.Tensor) -> np.ndarray:
    """Share of the slice each channel covers (N, C): the 'tissue volume per slice'."""
    return pv_maps.float().mean(dim=(2, 3)).numpy()


def volume_distances(a: np.ndarray, b: np.ndarray, channels: Sequence[str]) -> dict[str, float]:
    """1-D Wasserstein distance per channel between two sets of per-slice tissue volumes."""
    return {name: float(wasserstein_distance(a[:, i], b[:, i])) for i, name in enumerate(channels)}


def lesion_present(pv_maps: torch.Tensor, channel: int, min_pixels: int) -> torch.Tensor:
    """Per slice: does the channel win the argmax in at least `min_pixels` pixels?"""
    return (pv_maps.argmax(dim=1) == channel).flatten(1).sum(dim=1) >= min_pixels


def lesion_sizes(labels: np.ndarray, channel: int) -> np.ndarray:
    """Share of the slice the lesion covers (argmax labels (N, H, W)), for the slices where it appears."""
    share = (labels == channel).reshape(len(labels), -1).mean(axis=1)
    return share[share > 0]


def components_and_holes(mask: np.ndarray) -> tuple[int, int]:
    """Connected components of a 2D mask and its holes (background components that do not touch the border).

    4-connectivity for the mask and 8 for the background, so that a diagonal gap is neither a
    second component nor a way out of a hole (the digital-topology pairing).
    """
    _, components = ndimage.label(mask)
    background, count = ndimage.label(~mask, structure=np.ones((3, 3)))
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return int(components), int(count - np.count_nonzero(border))


def topology(labels: np.ndarray, channels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per tissue: mean connected components and holes per slice, over the slices where the tissue appears."""
    result = {}
    for index, name in enumerate(channels):
        counts = [components_and_holes(slice_ == index) for slice_ in labels if (slice_ == index).any()]
        if counts:
            components, holes = np.asarray(counts, dtype=np.float64).mean(axis=0)
            result[name] = {"components": float(components), "holes": float(holes), "slices": len(counts)}
    return result


def label_statistics(pv_maps: np.ndarray, channels: Sequence[str], lesion_channels: Sequence[str]) -> dict:
    """Everything label realism compares, for one set of PV maps (N, C, H, W)."""
    labels = pv_maps.argmax(axis=1)
    return {
        "volumes": tissue_volumes(torch.from_numpy(np.asarray(pv_maps, dtype=np.float32))),
        "lesion_sizes": {name: lesion_sizes(labels, channels.index(name)) for name in lesion_channels},
        "topology": topology(labels, channels),
    }


def label_distances(synthetic: dict, real: dict, channels: Sequence[str]) -> dict:
    """Wasserstein distances between two `label_statistics`: tissue volumes per channel and lesion sizes."""
    lesions = {}
    for name, sizes in synthetic["lesion_sizes"].items():
        other = real["lesion_sizes"][name]
        lesions[name] = float(wasserstein_distance(sizes, other)) if len(sizes) and len(other) else None
    return {"volumes": volume_distances(synthetic["volumes"], real["volumes"], channels), "lesion_sizes": lesions}


# Images: paired fidelity, diversity, intensities per tissue


WINDOW = 11  # SSIM's Gaussian window (Wang et al. 2004): 11 pixels, sigma 1.5
SIGMA = 1.5


def paired_fidelity(fake: torch.Tensor, real: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image SSIM over the slice, PSNR and MAE inside the brain, for (B, 1, H, W) batches.

    Every score uses each real image's own data range (max - min). SSIM is MONAI's with an
    11-pixel Gaussian window (sigma 1.5), averaged over every pixel of the slice: the images are
    zero-padded by half a window (MONAI's window only visits full positions) and divided by their
    data range (SSIM is unchanged when both images and the range are scaled alike; MONAI takes one
    range per batch). PSNR and MAE are written here because MONAI's PSNRMetric and MAEMetric
    average over the whole image and take no mask.

    Returns {"ssim", "psnr", "mae_brain"}, each (B,).
    """
    data_range = (real.amax(dim=(1, 2, 3)) - real.amin(dim=(1, 2, 3))).clamp_min(1e-6)
    scale = data_range.view(-1, 1, 1, 1)
    pad = [WINDOW // 2] * 4
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=WINDOW, kernel_sigma=SIGMA, reduction="none")
    brain_pixels = brain.sum(dim=(1, 2, 3)).clamp_min(1)
    mse = ((fake - real) ** 2 * brain).sum(dim=(1, 2, 3)) / brain_pixels
    return {
        "ssim": ssim(F.pad(fake / scale, pad), F.pad(real / scale, pad)).view(-1),
        "psnr": 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12)),
        "mae_brain": ((fake - real).abs() * brain).sum(dim=(1, 2, 3)) / brain_pixels,
    }


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def ms_ssim_weights(size: Sequence[int], kernel: int) -> tuple[float, ...]:
    """The first k of MS-SSIM's five scale weights (renormalised), k as large as the slice size allows.

    MONAI needs min(size) // (k - 1)² > kernel - 1; 48 x 64 slices with a 7-pixel window take 3 scales,
    192 x 256 slices all 5.
    """
    for scales in range(len(MS_SSIM_WEIGHTS), 1, -1):
        if min(size) // (scales - 1) ** 2 > kernel - 1:
            weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
            return tuple(float(w) for w in weights / weights.sum())
    raise ValueError(f"slices of {tuple(size)} are too small for MS-SSIM with a {kernel}-pixel window")


def mean_pairwise_ms_ssim(images: np.ndarray, pairs: int, kernel: int, seed: int) -> tuple[float, float]:
    """Mean and sd of MS-SSIM over `pairs` random pairs of distinct slices (N, H, W); lower = more diverse.

    Each slice is scaled to [0, 1] by its own range first (slices are z-scored, so unbounded), as
    MS-SSIM-based diversity scores do for generated images.
    """
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), pairs)
    second = (first + rng.integers(1, len(images), pairs)) % len(images)  # never the slice itself
    stack = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    low = stack.amin(dim=(1, 2, 3), keepdim=True)
    stack = (stack - low) / (stack.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel,
                                  weights=ms_ssim_weights(images.shape[1:], kernel), reduction="none")
    values = metric(stack[torch.from_numpy(first)], stack[torch.from_numpy(second)]).view(-1).numpy()
    return float(values.mean()), float(values.std())


def tissue_intensities(images: np.ndarray, labels: np.ndarray, channels: Sequence[str]) -> dict[str, np.ndarray]:
    """Per tissue (argmax label, background left out), the z-scored intensities of its pixels over all slices."""
    background = background_channel(channels)
    return {name: images[labels == index].astype(np.float32) for index, name in enumerate(channels)
            if index != background and (labels == index).any()}


def intensity_distances(synthetic: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, float]:
    """1-D Wasserstein distance per tissue between synthetic and real intensities (tissues present in both)."""
    return {name: float(wasserstein_distance(synthetic[name], real[name])) for name in synthetic if name in real}


TISSUES = ("csf", "gm", "wm")
RATIOS = {"gm_wm": ("gm", "wm"), "csf_gm": ("csf", "gm")}


def tissue_levels(images: np.ndarray, pv_maps: np.ndarray, channels: list[str], threshold: float = 0.9) -> dict:
    """(N,1,H,W) images + (N,C,H,W) PV maps -> mean rescaled intensity per tissue and the tissue ratios.

    Each image is rescaled to its brain's (background PV < 0.5) 1st-99th percentile = [0, 1] and clipped there; a
    tissue's level pools its PV > threshold voxels over all images. Tissues the schema lacks are left out.
    """
    background = background_channel(channels)
    sums = {t: 0.0 for t in TISSUES if t in channels}
    counts = dict.fromkeys(sums, 0)
    for image, pv in zip(images[:, 0], pv_maps, strict=True):
        brain = pv[background] < 0.5
        if brain.sum() < 2:
            continue
        low, high = np.percentile(image[brain], [1, 99])
        scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1)  # positive, so ratios are defined
        for tissue in sums:
            voxels = pv[channels.index(tissue)] > threshold
            sums[tissue] += float(scaled[voxels].sum())
            counts[tissue] += int(voxels.sum())
    levels = {t: sums[t] / counts[t] for t in sums if counts[t]}
    for name, (top, bottom) in RATIOS.items():
        if top in levels and bottom in levels and abs(levels[bottom]) > 1e-6:
            levels[name] = levels[top] / levels[bottom]
    return levels


# Realism: FID and KID of feature sets, with a real-vs-real floor beside each


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


# Memorisation: is each sample closer to a training slice than new real slices are?


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
    """The share of samples closer to the training set than the closest held-out slice, and the flag.

    Held-out real slices (test split, never seen by a generator) are the reference of a new slice: a
    generator that copies training slices puts its samples closer to the training set than any held-out
    slice; one that makes new slices does not (a fresh slice beats every one of n held-out slices with
    chance about 1 / (n + 1)).
    """
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
