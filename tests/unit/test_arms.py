"""Evaluations as run-experiment runs them: the dev split is scored only when asked, into its own folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.segmentation.evaluation import Evaluation, load_test_set, split_slice_indices
from brainspade.stages.config import compose


class _MemoryCache:
    """The slice cache's reads (its own methods) over tables and arrays held in memory."""

    image_indices = SliceCache.image_indices
    image = SliceCache.image
    pv_map = SliceCache.pv_map

    def __init__(self, folder: Path, splits: dict[str, str], dataset: str = "siteB"):
        """One data set's T1, three slices per subject (stored out of order), each subject in its split."""
        subjects = [subject for subject in splits for _ in range(3)]
        rng = np.random.default_rng(0)
        self.folder, self.channels = folder, ["background", "csf", "gm", "wm"]
        self.images = rng.normal(size=(len(subjects), 6, 8)).astype(np.float16)
        self.pv_maps = rng.dirichlet(np.ones(4), size=(len(subjects), 6, 8)).transpose(0, 3, 1, 2).astype(np.float16)
        self.image_table = {
            "label_index": np.arange(len(subjects)), "subject": np.array(subjects),
            "dataset": np.array([dataset] * len(subjects)), "modality": np.array(["T1"] * len(subjects)),
            "split": np.array([splits[s] for s in subjects]), "slice_index": np.tile([2, 0, 1], len(splits))}


def _cache(tmp_path: Path, splits: dict[str, str], dataset: str = "siteB") -> SliceCache:
    return _MemoryCache(tmp_path / "slices", splits, dataset)  # type: ignore[return-value]


def test_the_dev_split_is_scored_only_when_asked_and_refused_where_the_cache_has_none(tmp_path):
    cache = _cache(tmp_path, {"siteB_train_000": "train", "siteB_dev_000": "dev", "siteB_test_000": "test",
                              "siteB_test_001": "test"})
    dev = load_test_set(cache, "siteB", "T1", "dev")
    assert [volume.subject for volume in dev] == ["siteB_dev_000"]
    assert list(dev[0].slice_indices) == [0, 1, 2] and set(cache.image_table["split"][dev[0].image_indices]) == {"dev"}
    test = load_test_set(cache, "siteB", "T1")  # the report's split unless asked
    assert [volume.subject for volume in test] == ["siteB_test_000", "siteB_test_001"]
    without_dev = _cache(tmp_path, {"siteB_train_000": "train", "siteB_test_000": "test"})
    with pytest.raises(BrainspadeError) as refused:
        split_slice_indices(without_dev, "siteB", "T1", "dev")
    assert "no dev slices of data set 'siteB'" in str(refused.value) and "\n" not in str(refused.value)
    node = {"name": "n-ood", "test": {"dataset": "siteB", "modality": "T1"}, "arms": ["S"], "classes": ["csf"],
            "lesion_metrics": False}
    assert Evaluation.from_dict(node).split == "test"
    with pytest.raises(BrainspadeError, match=r"evaluation_split='val': choose one of test, dev"):
        dataclasses.replace(Evaluation.from_dict(node), split="val")


def test_run_experiment_refuses_a_dev_split_the_cache_lacks_before_any_training(tmp_path, monkeypatch, capsys):
    """`run-experiment iod evaluation_split=dev`: siteA (a source site) has no dev subjects, so nothing is trained."""
    from brainspade.stages import run_experiment

    cache = _cache(tmp_path, {"siteB_train_000": "train", "siteB_test_000": "test"})
    monkeypatch.setattr(run_experiment.SliceCache, "open", classmethod(lambda cls, folder: cache))
    monkeypatch.setattr(run_experiment, "require_complete", lambda folder, *names: folder)
    monkeypatch.setattr(run_experiment, "ensure_arm", lambda *args, **kwargs: pytest.fail("an arm was trained"))
    code, _, err = run_cli(capsys, "run-experiment", "iod", "evaluation_split=dev", f"workdir={tmp_path}",
                           "profile=tiny")
    assert code == 1 and "no dev slices of data set 'siteA' with modality 'T1'" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "run-experiment", "iod", "evaluation_split=val", f"workdir={tmp_path}",
                           "profile=tiny")
    assert code == 1 and "evaluation_split='val': choose one of test, dev" in err


def test_a_dev_report_scores_the_dev_split_into_its_own_folder(tmp_path, monkeypatch):
    """`evaluation_split=dev` reaches every evaluation, and its report never replaces the test report's folder."""
    from brainspade.segmentation.arms import TrainedArm
    from brainspade.stages import run_experiment

    cache = _cache(tmp_path, {"siteA_train_000": "train", "siteA_dev_000": "dev", "siteA_test_000": "test"}, "siteA")
    monkeypatch.setattr(run_experiment.SliceCache, "open", classmethod(lambda cls, folder: cache))
    monkeypatch.setattr(run_experiment, "require_complete", lambda folder, *names: folder)
    monkeypatch.setattr(run_experiment, "ensure_arm", lambda spec, folder, *args, **kwargs:
                        TrainedArm(spec.name, folder, f"fingerprint of {spec.name}", {}))
    scored = {}

    def evaluate(evaluations, cache, arms, settings, device, figure_slices, folder, header, base):
        for evaluation in evaluations:
            scored[evaluation.name] = [v.subject for v in load_test_set(cache, evaluation.test_dataset,
                                                                        evaluation.test_modality, evaluation.split)]
        (folder / "report.md").write_text("\n".join(header))
        return {name: len(subjects) for name, subjects in scored.items()}

    monkeypatch.setattr(run_experiment, "evaluate", evaluate)
    for split in ("dev", "test"):
        cfg = compose("run-experiment", ["experiment=iod", f"evaluation_split={split}", f"workdir={tmp_path}",
                                         "profile=tiny"])
        folder = run_experiment.run(cfg)
        assert scored == {"iod": [f"siteA_{split}_000"]}
        assert folder == tmp_path / "experiments" / ("iod" if split == "test" else "iod_dev")
    assert "dev split, for choosing settings" in (tmp_path / "experiments" / "iod_dev" / "report.md").read_text()
    assert "dev split" not in (tmp_path / "experiments" / "iod" / "report.md").read_text()
