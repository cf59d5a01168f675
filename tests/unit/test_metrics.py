"""brainspade.evaluation.metrics: the MONAI-based scores give the values of hand-written ones, and leave undefined values undefined."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainspade.evaluation.metrics import (
    dice,
    label_dice,
    mean_sd,
    paired_fidelity,
    precision,
    recall,
    streak_rate,
    volume_metrics,
)

# ---- hand-written references of paired fidelity and label Dice


def old_ssim(images: torch.Tensor, references: torch.Tensor, data_range: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(11, dtype=torch.float32) - 5
    gauss = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2)[None, None].to(images)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=5)

    c1 = (0.01 * data_range.view(-1, 1, 1, 1)) ** 2
    c2 = (0.03 * data_range.view(-1, 1, 1, 1)) ** 2
    mu_x, mu_y = blur(images), blur(references)
    sigma_x = blur(images * images) - mu_x**2
    sigma_y = blur(references * references) - mu_y**2
    sigma_xy = blur(images * references) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return value.mean(dim=(1, 2, 3))


def old_paired(fake: torch.Tensor, real: torch.Tensor, brain: torch.Tensor) -> dict[str, torch.Tensor]:
    data_range = (real.amax(dim=(1, 2, 3)) - real.amin(dim=(1, 2, 3))).clamp_min(1e-6)
    mse = ((fake - real) ** 2 * brain).sum(dim=(1, 2, 3)) / brain.sum(dim=(1, 2, 3)).clamp_min(1)
    return {
        "ssim": old_ssim(fake, real, data_range),
        "psnr": 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12)),
        "mae_brain": ((fake - real).abs() * brain).sum(dim=(1, 2, 3)) / brain.sum(dim=(1, 2, 3)).clamp_min(1),
    }


def old_dice_per_channel(predicted: torch.Tensor, real: torch.Tensor, channels: Sequence[str]) -> dict:
    predicted_labels, real_labels = predicted.argmax(dim=1), real.argmax(dim=1)
    scores: dict[str, float | None] = {}
    for index, name in enumerate(channels):
        a, b = predicted_labels == index, real_labels == index
        total = int(a.sum() + b.sum())
        scores[name] = None if total == 0 else 2.0 * int((a & b).sum()) / total
    return scores


# ---- paired fidelity of images, label Dice of PV maps


def _pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real slices of varied ranges and offsets, fakes that are noisy copies, and brain masks (one empty)."""
    generator = torch.Generator().manual_seed(seed)
    real = torch.rand(6, 1, 40, 52, generator=generator) * torch.tensor([1.0, 3.0, 0.2, 10.0, 1.0, 1.0]).view(-1, 1, 1, 1)
    real = real + torch.tensor([0.0, -1.0, 0.5, 2.0, 0.0, 0.0]).view(-1, 1, 1, 1)
    fake = real + 0.3 * torch.randn(real.shape, generator=generator) * real.std()
    fake[4] = torch.rand(1, 40, 52, generator=generator)  # unrelated image: SSIM near 0
    fake[5] = real[5]  # identical: SSIM 1, MSE 0 (PSNR from the clamp)
    brain = (torch.rand(real.shape, generator=generator) > 0.4).float()
    brain[2] = 0  # no brain: the clamps keep PSNR and MAE finite
    return fake, real, brain


@pytest.mark.parametrize("seed", [0, 1])
def test_paired_fidelity_matches_the_hand_written_metrics(seed):
    fake, real, brain = _pairs(seed)
    expected, got = old_paired(fake, real, brain), paired_fidelity(fake, real, brain)
    assert set(got) == {"ssim", "psnr", "mae_brain"}
    for key in expected:
        assert got[key].shape == (6,)
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
    assert got["ssim"][5] == pytest.approx(1.0, abs=1e-5) and abs(float(got["ssim"][4])) < 0.2


def test_label_dice_matches_the_hand_written_dice_and_leaves_absent_channels_undefined():
    channels = ["background", "csf", "gm", "wm", "tumour", "edema"]
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(5, 6, 24, 20, generator=generator)
    predicted = real + 0.8 * torch.rand(real.shape, generator=generator)
    real[:, 5] = -1  # edema: absent from both maps -> None
    predicted[:, 5] = -1
    predicted[:, 4] = -1  # tumour: only in the real maps -> 0.0
    expected, got = old_dice_per_channel(predicted, real, channels), label_dice(predicted, real, channels)
    assert list(got) == channels and got["edema"] is None and got["tumour"] == 0.0
    for name in channels:
        assert (got[name] is None) == (expected[name] is None)
        if expected[name] is not None:
            assert got[name] == pytest.approx(expected[name], abs=1e-12)
    assert label_dice(real, real, channels)["csf"] == 1.0


# ---- overlap of label volumes


def test_dice_precision_recall_on_known_arrays():
    truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    prediction = np.array([[1, 1, 0, 0, 1, 0, 0, 0]])
    assert dice(prediction, truth, 1) == pytest.approx(2 * 2 / (3 + 4))
    assert precision(prediction, truth, 1) == pytest.approx(2 / 3)
    assert recall(prediction, truth, 1) == pytest.approx(2 / 4)
    assert dice(truth, truth, 1) == 1.0 and dice(truth, truth, 0) == 1.0
    # Undefined, not a made-up score: the class is in neither array / nothing predicted / nothing to find.
    assert np.isnan(dice(prediction, truth, 5))
    assert np.isnan(precision(np.zeros_like(truth), truth, 1)) and recall(np.zeros_like(truth), truth, 1) == 0.0
    assert np.isnan(recall(prediction, np.zeros_like(truth), 1))
    rows = volume_metrics(prediction, truth, {"tumour": 1}, lesion_metrics=True)
    assert rows == [{"class": "tumour", "dice": pytest.approx(4 / 7), "precision": pytest.approx(2 / 3),
                     "recall": pytest.approx(0.5)}]
    assert set(volume_metrics(prediction, truth, {"csf": 1}, lesion_metrics=False)[0]) == {"class", "dice"}


def _old_dice(prediction, truth, label):
    """Dice written out from its definition, NaN when the label is in neither array."""
    predicted, true = prediction == label, truth == label
    total = int(predicted.sum()) + int(true.sum())
    return float("nan") if total == 0 else 2.0 * int((predicted & true).sum()) / total


def _old_precision(prediction, truth, label):
    predicted = prediction == label
    count = int(predicted.sum())
    return float("nan") if count == 0 else int((predicted & (truth == label)).sum()) / count


def _old_recall(prediction, truth, label):
    true = truth == label
    count = int(true.sum())
    return float("nan") if count == 0 else int(((prediction == label) & true).sum()) / count


def test_monai_metrics_equal_the_hand_written_ones_including_absent_classes():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(7, 20, 24)).astype(np.uint8)  # labels 4, 5 absent from the truth
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 6, size=truth.shape)).astype(np.uint8)
    prediction[prediction == 3] = 0  # label 3: only in the truth
    compared = 0
    for label in range(7):  # 6: in neither
        for new, old in ((dice, _old_dice), (precision, _old_precision), (recall, _old_recall)):
            got, expected = new(prediction, truth, label), old(prediction, truth, label)
            assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-12), (new, label)
            compared += not np.isnan(expected)
    assert compared >= 15 and np.isnan(dice(prediction, truth, 6)) and dice(prediction, truth, 3) == 0.0
    assert dice(prediction, truth, 4) == 0.0 and np.isnan(recall(prediction, truth, 4))


def test_mean_sd_skips_undefined_values():
    assert mean_sd([0.5, 0.7, float("nan")]) == (pytest.approx(0.6), pytest.approx(np.std([0.5, 0.7], ddof=1)), 2)
    assert mean_sd([0.4]) == (0.4, 0.0, 1)
    mean, sd, n = mean_sd([float("nan")])
    assert np.isnan(mean) and n == 0


def test_streak_rate_counts_a_slice_that_disagrees_with_both_neighbours_only():
    volume = np.full((4, 4, 6), 2, dtype=np.uint8)
    assert streak_rate(volume) == 0.0
    volume[0, 0, 2] = 3  # one voxel of one slice: a stripe across the stack
    volume[1, 1, 3:] = 3  # a border between slices, not a stripe
    assert streak_rate(volume) == pytest.approx(1 / (4 * 4 * 4))
