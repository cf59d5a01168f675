"""`run-experiment iod` end to end at profile=tiny: the report agrees with the saved predictions.

The synthetic arm S_iod trains on real `brainspade sample` output made with the shared
tiny-trained generators (conftest.trained_workdir). At profile=tiny this checks the experiment
machinery (models, predictions, metrics, tables, statistics), not synthetic data quality.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import markdown_rows, markdown_table, run_cli

from brainspade.data.slice_cache import SliceCache
from brainspade.evaluation.metrics import dice, mean_sd
from brainspade.segmentation.evaluation import load_volume
from brainspade.segmentation.raw_dataset import labels_from_pv
from brainspade.segmentation.report import relation_verdict
from brainspade.segmentation.statistics import paired_difference, paired_tests

pytestmark = pytest.mark.slow  # end-to-end stage runs (profile=tiny)

CLASSES = {"csf": 1, "gm": 2, "wm": 3}
ARMS = ["R_iod", "S_iod", "D"]


def recording_make_sample_set(calls: list):
    """The real make_sample_set, recording what each synthetic arm asked for."""
    from brainspade.generation import sample_set

    real = sample_set.make_sample_set

    def make_sample_set(folder, generators, style, n, **kwargs):
        calls.append({"name": folder.name, "n": n, "style_dataset": style.dataset, "style_modality": style.modality,
                      "conditions": kwargs["conditions"], "site_look": kwargs["sampling"].site_look.enabled})
        return real(folder, generators, style, n, **kwargs)

    return make_sample_set


@pytest.fixture(scope="module")
def experiment(trained_workdir):
    """Run `run-experiment iod` once for the module; return (folder, workdir, make_sample_set calls, seconds)."""
    workdir = trained_workdir
    calls: list = []
    patcher = pytest.MonkeyPatch()
    patcher.setattr("brainspade.generation.sample_set.make_sample_set", recording_make_sample_set(calls))
    from brainspade.cli import main  # run_cli needs the function-scoped capsys; this fixture is module-scoped

    started = time.time()
    code = main(["run-experiment", "iod", f"workdir={workdir}", "profile=tiny"])
    seconds = time.time() - started
    patcher.undo()
    assert code == 0
    return workdir / "experiments" / "iod", workdir, calls, seconds


def _results(folder: Path) -> list[dict]:
    with (folder / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _truth_and_predictions(folder: Path, workdir: Path) -> tuple[dict, dict]:
    """Ground truth rebuilt from the slice cache (test split) and each arm's saved prediction volumes."""
    cache = SliceCache.open(workdir / "slices")
    with (folder / "predictions" / "iod" / "slices.csv").open(newline="") as handle:
        slices = list(csv.DictReader(handle))
    truth: dict[str, list] = {}
    for row in slices:
        index = int(row["image_index"])
        assert cache.image_table["split"][index] == "test" and cache.image_table["dataset"][index] == "siteA"
        assert cache.image_table["subject"][index] == row["subject"]
        truth.setdefault(row["subject"], []).append(
            (int(row["slice_index"]), labels_from_pv(cache.pv_map(int(cache.image_table["label_index"][index])))))
    truth_volumes = {s: np.stack([t for _, t in sorted(v, key=lambda p: p[0])]) for s, v in truth.items()}
    predictions = {arm: {s: load_volume(folder / "predictions" / "iod" / arm / f"{s}.nii.gz") for s in truth_volumes}
                   for arm in ARMS}
    return truth_volumes, predictions


def test_results_csv_matches_saved_predictions(experiment):
    folder, workdir, _, _ = experiment
    truth, predictions = _truth_and_predictions(folder, workdir)
    rows = _results(folder)
    subjects = sorted(truth)
    assert subjects == ["siteA_test_000", "siteA_test_001"]  # every siteA test volume, nothing else
    assert {(r["arm"], r["subject"], r["class"]) for r in rows} == set(itertools.product(ARMS, subjects, CLASSES))
    for row in rows:
        prediction = predictions[row["arm"]][row["subject"]]
        assert prediction.shape == truth[row["subject"]].shape
        expected = dice(prediction, truth[row["subject"]], CLASSES[row["class"]])
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-12, nan_ok=True)
        assert row["precision"] == "" and row["recall"] == ""  # lesion metrics only for lesion experiments


def test_report_tables_match_results(experiment):
    folder, _, _, _ = experiment
    report = (folder / "report.md").read_text()
    rows = _results(folder)

    def values(arm, class_name):
        chosen = sorted((r for r in rows if r["arm"] == arm and r["class"] == class_name), key=lambda r: r["subject"])
        return [float(r["dice"]) for r in chosen]

    means = markdown_table(report, "### Dice (mean ± sd over test volumes)")
    assert list(means) == ARMS
    for arm in ARMS:
        for class_name, cell in zip(CLASSES, means[arm], strict=True):
            mean, sd, _ = mean_sd(values(arm, class_name))
            shown = [float(x) for x in re.findall(r"-?\d+\.\d+", cell)[:2]]
            assert shown == pytest.approx([mean, sd], abs=6e-5), (arm, class_name, cell)
    tests = markdown_table(report, "### Dice: paired differences")
    assert list(tests) == ["R_iod − S_iod", "R_iod − D", "S_iod − D"]
    for class_name, cell in zip(CLASSES, tests["R_iod − S_iod"], strict=True):
        first, second = values("R_iod", class_name), values("S_iod", class_name)
        expected = paired_tests(first, second)
        difference_cell, p_cell = cell.split("; p ")
        shown_difference = float(re.findall(r"[-+]\d+\.\d+", difference_cell)[0])
        assert shown_difference == pytest.approx(np.nanmean(np.subtract(first, second)), abs=6e-4)
        t_cell, w_cell = (c.strip() for c in p_cell.split("/"))
        for shown, p in ((t_cell, expected.t_test_p), (w_cell, expected.wilcoxon_p)):
            assert (shown == "n/a") if math.isnan(p) else float(shown) == pytest.approx(p, rel=5e-3)


def test_report_opens_with_the_papers_finding_tested_against_results(experiment):
    folder, _, _, _ = experiment
    report = (folder / "report.md").read_text()
    assert report.index("## The paper's findings, tested here") < report.index("## Models")
    rows = _results(folder)
    findings = [cells[1:] for cells in markdown_rows(report, "## The paper's findings, tested here")]
    assert [cells[1] for cells in findings] == ["R_iod − S_iod (dice)", "S_iod − D (dice)"]
    per_volume = {arm: np.nanmean([[float(r["dice"]) for r in sorted(rows, key=lambda r: r["subject"])
                                    if r["arm"] == arm and r["class"] == c] for c in CLASSES], axis=0)
                  for arm in ARMS}
    for finding, (better, worse) in zip(findings, [("R_iod", "S_iod"), ("S_iod", "D")], strict=True):
        expected = paired_difference(per_volume[better], per_volume[worse])
        shown = [float(x) for x in re.findall(r"[-+]\d+\.\d+", finding[2])]
        assert shown[0] == pytest.approx(expected.mean, abs=6e-4)
        verdict = relation_verdict(expected, paired_tests(per_volume[better], per_volume[worse]))
        assert finding[-1] == verdict and verdict.startswith("too few volumes")  # tiny: 2 volumes


def test_report_says_what_each_model_trained_on(experiment):
    folder, workdir, calls, _ = experiment
    report = (folder / "report.md").read_text()
    models = markdown_table(report, "## Models")
    assert {arm: cells[0] for arm, cells in models.items()} == {  # how each arm's images were made
        "R_iod": "real", "S_iod": "published brainSPADE (SPADE, styles from siteA)",
        "D": "domain randomisation (label maps of S_iod)"}
    assert "real siteA T1 (train split, 3 volumes" in models["R_iod"][1]
    assert "synthetic 'S_iod'" in models["S_iod"][1] and "siteA T1" in models["S_iod"][1]
    assert "domain-randomised 'D'" in models["D"][1] and "label maps of 'S_iod'" in models["D"][1]
    # The synthetic arm asked for the profile's n samples styled with siteA T1 train images, as published (no site
    # look); D reuses that set.
    assert {tuple(sorted(c.items())) for c in calls} == {tuple(sorted({
        "name": "S_iod", "n": 40, "style_dataset": "siteA", "style_modality": "T1", "conditions": "healthy",
        "site_look": False}.items()))}
    for arm in ARMS:
        assert (workdir / "segmentation" / "models" / arm / "manifest.json").is_file()
    for figure in ("iod_scores.png", "iod_slices.png"):
        assert (folder / "figures" / figure).read_bytes()[:4] == b"\x89PNG"


def test_rerun_reuses_models_and_report(experiment, capsys, monkeypatch):
    folder, workdir, calls, seconds = experiment
    print(f"\n[tiny run-experiment iod: {seconds:.0f} s]")
    report_before = (folder / "report.md").read_text()
    code, out, err = run_cli(capsys, "run-experiment", "iod", f"workdir={workdir}", "profile=tiny")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(folder)  # the last line is the report's folder
    assert "up to date" in out and "training nnU-Net" not in out
    assert (folder / "report.md").read_text() == report_before


def test_unknown_experiment_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run-experiment", "nope", f"workdir={tmp_path}", "profile=tiny")
    assert code == 1 and "experiment='nope' is not defined" in err


def test_the_randomised_arm_trains_on_the_synthetic_arms_label_maps_with_other_images(experiment):
    _, workdir, _, _ = experiment
    synthetic, randomised = workdir / "samples" / "S_iod", workdir / "samples" / "D"
    cases = sorted(p.name for p in (synthetic / "labelsTr").iterdir())
    assert cases == sorted(p.name for p in (randomised / "labelsTr").iterdir()) and len(cases) == 40
    for case in cases[:5]:
        assert (synthetic / "labelsTr" / case).read_bytes() == (randomised / "labelsTr" / case).read_bytes()
        image = case.replace(".nii.gz", "_0000.nii.gz")
        assert (synthetic / "imagesTr" / image).read_bytes() != (randomised / "imagesTr" / image).read_bytes()
