"""The statistics of the relations table: paired intervals, tests and the verdict each finding gets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from brainspade.errors import BrainspadeError
from brainspade.segmentation.evaluation import Evaluation
from brainspade.segmentation.report import relation_verdict, relations_section
from brainspade.segmentation.statistics import PairedDifference, PairedTest, paired_difference, paired_tests


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


def test_paired_tests_on_known_inputs():
    first, second = [0.80, 0.85, 0.90, 0.70, 0.75], [0.70, 0.80, 0.82, 0.69, 0.60]
    differences = np.subtract(first, second)
    t = differences.mean() / (differences.std(ddof=1) / np.sqrt(len(differences)))
    result = paired_tests(first, second)
    assert result.n == 5
    assert result.t_test_p == pytest.approx(2 * stats.t.sf(abs(t), df=4))
    assert result.wilcoxon_p == pytest.approx(0.0625)  # all 5 differences positive: 2 / 2**5
    assert paired_tests(second, first).t_test_p == pytest.approx(result.t_test_p)  # two-sided
    # Identical scores on every volume: no evidence of a difference, p = 1 (not an error or NaN).
    assert paired_tests([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == PairedTest(1.0, 1.0, 3)
    # Pairs with an undefined value are dropped; fewer than two pairs give no test.
    dropped = paired_tests([0.5, float("nan"), 0.7, 0.2], [0.4, 0.1, 0.5, 0.3])
    assert dropped.n == 3 and dropped.t_test_p == pytest.approx(stats.ttest_rel([0.5, 0.7, 0.2], [0.4, 0.5, 0.3]).pvalue)
    assert np.isnan(paired_tests([0.5, float("nan")], [0.4, 0.3]).t_test_p)
