"""`run-experiment lesion` end to end at profile=tiny: the D_les arm and the relations table against results.csv.

At profile=tiny this checks the machinery (a randomised arm on S_les's label maps, lesion metrics,
the findings table), not whether lesions are learnt: that is the cpu demo's job (benchmarks/demo.md).
"""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from conftest import markdown_rows, markdown_table

from brainspade.segmentation.report import relation_verdict
from brainspade.segmentation.statistics import paired_difference, paired_tests

pytestmark = pytest.mark.slow

ARMS = ["R_les", "S_les", "H_les", "D_les"]
CLASSES = ["tumour", "edema"]


@pytest.fixture(scope="module")
def lesion_experiment(trained_workdir):
    from brainspade.cli import main

    assert main(["run-experiment", "lesion", f"workdir={trained_workdir}", "profile=tiny"]) == 0
    return trained_workdir / "experiments" / "lesion", trained_workdir


def _per_volume(rows: list[dict], arm: str, metric: str) -> np.ndarray:
    chosen = sorted((r for r in rows if r["arm"] == arm), key=lambda r: (r["subject"], r["class"]))
    values = np.array([float(r[metric]) if r[metric] not in ("", "nan") else np.nan for r in chosen])
    return np.nanmean(values.reshape(-1, len(CLASSES)), axis=1)


def test_lesion_report_has_the_randomised_arm_and_its_findings_match_results(lesion_experiment):
    folder, workdir = lesion_experiment
    report = (folder / "report.md").read_text()
    with (folder / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["arm"] for r in rows}) == sorted(ARMS)
    assert all(r["precision"] != "" and r["recall"] != "" for r in rows)  # lesion metrics for every arm

    dice = markdown_table(report, "### Dice (mean ± sd over test volumes)")
    assert list(dice) == ARMS and len(dice["D_les"]) == len(CLASSES)
    models = markdown_table(report, "## Models")
    assert "label maps of 'S_les'" in models["D_les"][1]
    assert models["H_les"][0] == "real + published brainSPADE (SPADE, styles from siteT)"
    assert {cells[3] for cells in models.values()} == {"2 x 5 iterations"}  # the tiny profile's nnU-Net length

    findings = [cells[1:] for cells in markdown_rows(report, "## The paper's findings, tested here")]
    assert [cells[1] for cells in findings] == ["H_les − R_les (recall)", "S_les − D_les (dice)"]
    finding = findings[0]
    better, worse = _per_volume(rows, "H_les", "recall"), _per_volume(rows, "R_les", "recall")
    expected, tests = paired_difference(better, worse), paired_tests(better, worse)
    shown = [float(x) for x in re.findall(r"[-+]\d+\.\d+", finding[2])]
    assert shown[0] == pytest.approx(expected.mean, abs=6e-4)
    assert finding[3].split("/")[0].strip() in ("n/a", f"{tests.t_test_p:.3g}")
    assert finding[-1] == relation_verdict(expected, tests) and finding[-1].startswith("too few volumes")  # tiny: 2 test volumes
    labels_les = sorted(p.name for p in (workdir / "samples" / "S_les" / "labelsTr").iterdir())
    assert labels_les == sorted(p.name for p in (workdir / "samples" / "D_les" / "labelsTr").iterdir())
