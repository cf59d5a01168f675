"""The README's results table from one demo's reports: every arm on each target site, mean Dice with its 95% CI.

Reads W/experiments/ood/results.csv (and iod, lesion where present), written by `brainspade run-experiment` on the
test split; prints markdown. Per arm: the test volumes' Dice averaged over the evaluation's classes, its mean and a
BCa bootstrap 95% CI over volumes, and its paired difference to the published synthetic arm of that site (S_<site>)
with the CI and the t-test / Wilcoxon p-values the reports use. Nothing is trained or re-scored.

Usage:
    .venv/bin/python scripts/results_table.py --workdir brainspade_work
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

# What each arm is, in the words of the experiments (configs/stage/experiment.yaml).
ROLES = {"R_iod": "real source data (siteA)", "S_iod": "published brainSPADE, source styles",
         "S": "published brainSPADE, target styles", "SF": "extension: SPADE + fitted site model",
         "F": "ablation: the fitted site model's render alone", "D": "domain randomisation",
         "R": "real target data (reference)", "H": "real + published synthetic"}


def role(arm: str) -> str:
    return ROLES.get(arm) or ROLES.get(arm.split("_")[0], "")


def volume_dice(path: Path) -> dict[str, dict[str, list[float]]]:
    """evaluation -> arm -> per-volume Dice averaged over classes (NaN classes skipped), ordered by subject."""
    cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            value = float(row["dice"]) if row["dice"] not in ("", "nan") else math.nan
            cells[(row["evaluation"], row["arm"], row["subject"])].append(value)
    table: dict[str, dict[str, list[tuple[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for (evaluation, arm, subject), values in cells.items():
        finite = [v for v in values if not math.isnan(v)]
        table[evaluation][arm].append((subject, float(np.mean(finite)) if finite else math.nan))
    return {e: {a: [v for _, v in sorted(rows)] for a, rows in arms.items()} for e, arms in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--experiments", nargs="+", default=["iod", "ood", "lesion"])
    parser.add_argument("--wide", action="store_true", help="one row per target site, one column per kind of arm "
                                                             "(R_iod, S_iod, S, SF, F, D, R): the ood experiment only")
    args = parser.parse_args()

    from brainspade.segmentation.report import format_difference as interval
    from brainspade.segmentation.statistics import paired_tests

    if args.wide:
        kinds = ["R_iod", "S_iod", "S", "SF", "F", "D", "R"]
        print("| test set | R_iod (real siteA) | S_iod (published, source styles) | S_<site> (published) "
              "| SF_<site> (extension) | F_<site> (ablation) | D (randomised) | R_<site> (real target) |")
        print("|---|" + "---|" * len(kinds))
        for evaluation, arms in volume_dice(args.workdir / "experiments" / "ood" / "results.csv").items():
            by_kind = {arm if arm in kinds else arm.split("_")[0]: values for arm, values in arms.items()}
            cells = [interval(by_kind[k], [0.0] * len(by_kind[k]), sign="") if k in by_kind else "not trained"
                     for k in kinds]
            print(f"| {evaluation} | " + " | ".join(cells) + " |")
        return
    print("| test set | arm | training images | Dice [95% CI] | − the published S arm [95% CI] | p (t / Wilcoxon) |")
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments:
        path = args.workdir / "experiments" / experiment / "results.csv"
        if not path.is_file():
            print(f"{path} is missing: run `brainspade run-experiment {experiment}` first", flush=True)
            continue
        for evaluation, arms in volume_dice(path).items():
            published = next((a for a in arms if a.startswith("S_") and a != "S_iod"), "S_iod")
            for arm, values in arms.items():
                mean = interval(values, [0.0] * len(values), sign="")
                if arm == published:
                    versus, p = "", ""
                else:
                    versus = interval(values, arms[published])
                    tests = paired_tests(values, arms[published])
                    p = "n/a" if math.isnan(tests.t_test_p) else f"{tests.t_test_p:.2g} / {tests.wilcoxon_p:.2g}"
                print(f"| {evaluation} | {arm} | {role(arm)} | {mean} | {versus} | {p} |")


if __name__ == "__main__":
    main()
