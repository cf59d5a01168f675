"""Domain randomisation (the D arms) and the statistics of the relations table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import _sphere_pv

from brainspade.errors import BrainspadeError
from brainspade.generation.randomisation import randomised_images
from brainspade.segmentation.arms import ArmSpec, RandomisedSource
from brainspade.segmentation.evaluation import Evaluation
from brainspade.segmentation.report import relation_verdict, relations_section
from brainspade.segmentation.statistics import PairedDifference, PairedTest, paired_difference
from brainspade.settings import RandomisationSettings


def _pv_maps(n: int = 4) -> np.ndarray:
    pv = np.moveaxis(_sphere_pv((24, 32, 1), radius=10)[:, :, 0], 2, 0)  # (C, H, W)
    return np.repeat(pv[None], n, axis=0)


def test_randomised_images_are_zscored_in_the_brain_and_depend_only_on_their_seed():
    pv = _pv_maps()
    settings = RandomisationSettings()
    images = randomised_images(pv, [1, 2, 3, 1], settings)
    assert images.shape == (4, 24, 32) and images.dtype == np.float32 and np.isfinite(images).all()
    brain = pv[0, 0] < 0.5
    for image in images:
        assert abs(image[brain].mean()) < 1e-4 and image[brain].std() == pytest.approx(1, abs=1e-3)
    np.testing.assert_array_equal(images[0], images[3])  # same seed, same map: same image, whatever its batch
    assert not np.allclose(images[0], images[1])
    alone = randomised_images(pv[:1], [2], settings)
    np.testing.assert_array_equal(alone[0], images[1])


def test_randomised_tissue_contrast_varies_across_images():
    pv = _pv_maps(12)
    images = randomised_images(pv, list(range(12)), RandomisationSettings(bias_field=0, noise_std=[0, 0]))
    gm, wm = pv[0, 2] > 0.9, pv[0, 3] > 0.9
    contrast = [image[wm].mean() - image[gm].mean() for image in images]
    assert min(contrast) < 0 < max(contrast)  # no contrast is privileged: WM darker than GM in some, brighter in others


def test_a_randomised_arm_parses_and_may_not_be_mixed_with_a_synthetic_set():
    arm = ArmSpec.from_dict("D", {"randomised": {"samples": "D", "labels_from": "S_iod"}})
    assert arm.generated == RandomisedSource("D", "S_iod") and arm.as_dict() == {
        "randomised": {"samples": "D", "labels_from": "S_iod"}}
    with pytest.raises(BrainspadeError, match="experiments.arms.X: give `real` and/or one of"):
        ArmSpec.from_dict("X", {"randomised": {"samples": "D", "labels_from": "S"},
                                "synthetic": {"samples": "S", "style_dataset": "a", "style_modality": "T1",
                                              "conditions": "healthy"}})
    with pytest.raises(BrainspadeError, match="experiments.arms.D.randomised: give samples, labels_from"):
        ArmSpec.from_dict("D", {"randomised": {"samples": "D"}})


def test_paired_difference_interval_covers_the_mean_and_tightens_with_more_volumes():
    rng = np.random.default_rng(0)
    small_a, small_b = rng.normal(0.80, 0.05, 6), rng.normal(0.75, 0.05, 6)
    small = paired_difference(small_a, small_b)
    assert small.low < small.mean < small.high and small.n == 6
    big_a, big_b = rng.normal(0.80, 0.05, 60), rng.normal(0.75, 0.05, 60)
    big = paired_difference(big_a, big_b)
    assert big.high - big.low < small.high - small.low
    assert big.low > 0  # a real 0.05 gap over 60 volumes is found
    assert paired_difference([0.8, float("nan"), 0.7], [0.7, 0.9, 0.6]).n == 2
    assert paired_difference(small_a, small_b) == small  # fixed seed: a report is reproducible


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [{"evaluation": "iod", "arm": arm, "subject": f"s{k:02d}", "class": c, "dice": v}
            for arm, per_volume in values.items() for k, v in enumerate(per_volume) for c in ("gm", "wm")]


@pytest.mark.parametrize(("gap", "verdict"), [(0.1, "holds"), (-0.1, "reversed"), (0.0, "n.s.")])
def test_the_relations_table_says_whether_a_finding_holds(gap, verdict):
    evaluation = Evaluation.from_dict({
        "name": "iod", "test": {"dataset": "siteA", "modality": "T1"}, "arms": ["R", "S"], "classes": ["gm", "wm"],
        "lesion_metrics": False, "relations": [{"finding": "R beats S", "better": "R", "worse": "S"}]})
    rng = np.random.default_rng(1)
    worse = rng.uniform(0.6, 0.7, 10)
    better = worse + gap + rng.normal(0, 0.01, 10) * (gap != 0) + (gap == 0) * rng.normal(0, 0.05, 10)
    lines = relations_section([evaluation], _rows({"R": list(better), "S": list(worse)}))
    row = [line for line in lines if line.startswith("| iod")][0]
    assert "R beats S" in row and "R − S (dice)" in row and row.rstrip(" |").endswith(verdict)


def test_a_finding_holds_only_when_the_interval_and_both_tests_agree():
    lesion_run = PairedDifference(0.026, 0.001, 0.054, 10)  # a cpu lesion run: the CI just above 0, t-test p = 0.10
    assert relation_verdict(lesion_run, PairedTest(0.101, 0.16, 10)) == "n.s."
    assert relation_verdict(lesion_run, PairedTest(0.01, 0.02, 10)) == "holds"
    assert relation_verdict(PairedDifference(-0.05, -0.08, -0.02, 10), PairedTest(0.01, 0.002, 10)) == "reversed"
    assert relation_verdict(PairedDifference(-0.05, -0.08, -0.02, 10), PairedTest(0.2, 0.002, 10)) == "n.s."
    assert relation_verdict(PairedDifference(0.1, 0.05, 0.15, 4), PairedTest(0.01, 0.125, 4)).startswith("too few")


def test_a_relation_must_compare_arms_of_its_evaluation():
    with pytest.raises(BrainspadeError, match="both must be arms of the evaluation"):
        Evaluation.from_dict({"name": "iod", "test": {"dataset": "a", "modality": "T1"}, "arms": ["R", "S"],
                              "classes": ["gm"], "lesion_metrics": False,
                              "relations": [{"finding": "f", "better": "H", "worse": "S"}]})


def test_a_randomised_set_depends_on_its_sources_label_maps_not_on_how_its_images_were_made(tmp_path):
    """Two S sets with the same label key and size (e.g. before and after a new style path) give the D set one
    fingerprint; another size, another; a set without a key falls back to its whole fingerprint."""
    import json

    from brainspade.engine.stage import StageFolder
    from brainspade.stages.sample_randomised import label_maps_fingerprint

    def sample_set(name: str, fingerprint: str, n: int, key: str | None) -> Path:
        folder = StageFolder(tmp_path / name, fingerprint)
        folder.prepare("", force=True)
        (folder.path / "dataset.json").write_text(json.dumps({"numTraining": n}))
        if key is not None:
            (folder.path / "label_key.txt").write_text(key + "\n")
        return folder.finish({"dataset": "dataset.json"})

    plain, transferred = sample_set("a", "f1", 40, "k"), sample_set("b", "f2", 40, "k")
    assert label_maps_fingerprint(plain) == label_maps_fingerprint(transferred)
    assert label_maps_fingerprint(sample_set("c", "f1", 80, "k")) != label_maps_fingerprint(plain)
    assert label_maps_fingerprint(sample_set("d", "f1", 40, "k2")) != label_maps_fingerprint(plain)
    assert label_maps_fingerprint(sample_set("e", "f3", 40, None)) != label_maps_fingerprint(sample_set("g", "f4", 40, None))
