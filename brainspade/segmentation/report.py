"""An experiment's report: results.csv (per volume), report.md (tables), PNG figures.

Table cells are `mean ± sd` over test volumes (NaN values skipped, n shown when some are)
and p-values of paired tests between every two arms on the same volumes. A report of the dev split
(`evaluation_split=dev`, for choosing settings) says so in every table title.
"""

from __future__ import annotations

import csv
import itertools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainspade.engine.logging import LABEL_COLOURS, in_plain_style
from brainspade.evaluation.metrics import mean_sd
from brainspade.segmentation.arms import SYNTHESES
from brainspade.segmentation.evaluation import RESULT_COLUMNS, Evaluation, TestVolume
from brainspade.segmentation.statistics import PairedDifference, PairedTest, paired_difference, paired_tests

METRIC_TITLES = {"dice": "Dice", "precision": "Precision", "recall": "Recall"}


def write_results_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One row per evaluation x arm x test volume x class; metrics not computed are left empty."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RESULT_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key, "")) for key in RESULT_COLUMNS})


def metric_values(rows: Sequence[dict[str, Any]], evaluation: str, arm: str, class_name: str, metric: str) -> list:
    """Per-volume values of one metric, ordered by subject (the pairing order of the tests)."""
    chosen = [r for r in rows if r["evaluation"] == evaluation and r["arm"] == arm and r["class"] == class_name]
    return [float(r[metric]) for r in sorted(chosen, key=lambda r: r["subject"])]


def format_mean_sd(values: Sequence[float]) -> str:
    mean, sd, n = mean_sd(values)
    if n == 0:
        return "n/a"
    cell = f"{mean:.4f} ± {sd:.4f}"
    return cell if n == len(values) else f"{cell} (n={n})"


def format_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def format_difference(first: Sequence[float], second: Sequence[float], sign: str = "+") -> str:
    """'+0.031 [+0.012, +0.049]': the paired mean difference (first − second) and its bootstrap 95% CI
    (sign='': no '+', e.g. a mean against zeros)."""
    difference = paired_difference(first, second)
    if math.isnan(difference.mean):
        return "n/a"
    if math.isnan(difference.low):
        return f"{difference.mean:{sign}.3f}"
    return f"{difference.mean:{sign}.3f} [{difference.low:{sign}.3f}, {difference.high:{sign}.3f}]"


def volume_means(rows: Sequence[dict[str, Any]], evaluation: Evaluation, arm: str, metric: str) -> list[float]:
    """Per volume (ordered by subject), the metric averaged over the evaluation's classes (NaN classes skipped)."""
    per_class = np.array([metric_values(rows, evaluation.name, arm, c, metric) for c in evaluation.classes])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a volume where every class is undefined: NaN
        return np.nanmean(per_class, axis=0).tolist()


MIN_VOLUMES_FOR_A_VERDICT = 5  # a bootstrap over fewer volumes says nothing (2 volumes: 3 possible resamples)


SIGNIFICANCE = 0.05


def relation_verdict(difference: PairedDifference, tests: PairedTest) -> str:
    """holds / reversed (95% CI above / below 0 *and* both paired tests p < 0.05), n.s., or too few volumes to say.

    The tests must agree with the interval: over ~10 volumes a BCa interval can exclude 0 while the t-test gives
    p = 0.10 (it did in a cpu lesion run), and a finding that one of three summaries rejects is not shown here.
    """
    if difference.n < MIN_VOLUMES_FOR_A_VERDICT or math.isnan(difference.low):
        return f"too few volumes (n={difference.n})"
    significant = all(p < SIGNIFICANCE for p in (tests.t_test_p, tests.wilcoxon_p))  # NaN compares False
    if significant and difference.low > 0:
        return "holds"
    if significant and difference.high < 0:
        return "reversed"
    return "n.s."


def relations_section(evaluations: Sequence[Evaluation], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's opening table: each finding of the paper, our paired difference, its CI and p, and a verdict.

    A relation holds when the 95% CI of (better − worse) lies above 0 and the paired t-test and Wilcoxon test both
    give p < 0.05, is reversed when the CI lies below 0 with both p < 0.05, and is not shown (n.s.) otherwise; with
    fewer than MIN_VOLUMES_FOR_A_VERDICT test volumes no verdict is given. Values are per-volume means over the
    evaluation's classes.
    """
    relations = [(evaluation, relation) for evaluation in evaluations for relation in evaluation.relations]
    if not relations:
        return []
    split = relations[0][0].split
    lines = ["## The paper's findings, tested here", "",
             f"Per {split} volume, the metric averaged over the evaluation's classes; the difference is paired over "
             "volumes, with a bootstrap 95% CI (BCa, 9,999 resamples) and two-sided paired t-test / Wilcoxon "
             "p-values; a finding holds (or is reversed) when the CI excludes 0 and both p < 0.05.", "",
             "| test set | the paper's finding | compared | difference [95% CI] | p (t / Wilcoxon) | n | here |",
             "|---|---|---|---|---|---|---|"]
    for evaluation, relation in relations:
        better = volume_means(rows, evaluation, relation.better, relation.metric)
        worse = volume_means(rows, evaluation, relation.worse, relation.metric)
        difference, tests = paired_difference(better, worse), paired_tests(better, worse)
        verdict = relation_verdict(difference, tests)
        lines.append(f"| {evaluation.name} ({evaluation.test_dataset} {evaluation.test_modality}) | "
                     f"{relation.finding} | {relation.better} − {relation.worse} ({relation.metric}) | "
                     f"{format_difference(better, worse)} | {format_p(tests.t_test_p)} / "
                     f"{format_p(tests.wilcoxon_p)} | {difference.n} | {verdict} |")
    return lines + [""]


def evaluation_section(
    evaluation: Evaluation, rows: Sequence[dict[str, Any]], volumes: list[TestVolume], figures: dict[str, str]
) -> list[str]:
    """Markdown of one evaluation: a mean ± sd table and a p-value table per metric."""
    name, arms, classes, metrics = evaluation.name, evaluation.arms, evaluation.classes, evaluation.metrics
    lines = [
        f"## {name}: tested on {evaluation.test_dataset} {evaluation.test_modality}"
        + ("" if evaluation.split == "test" else f" ({evaluation.split} split)"),
        "",
        f"{evaluation.split.capitalize()} split of {evaluation.test_dataset}: {len(volumes)} volumes, "
        f"{sum(len(v.images) for v in volumes)} slices "
        f"({', '.join(v.subject for v in volumes)}). Arms: {', '.join(arms)}.",
        "",
    ]
    header = ["| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for metric in metrics:
        lines += [f"### {METRIC_TITLES[metric]} (mean ± sd over {evaluation.split} volumes)", "", *header]
        for arm in arms:
            cells = [format_mean_sd(metric_values(rows, name, arm, c, metric)) for c in classes]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", f"### {METRIC_TITLES[metric]}: paired differences (first − second) with bootstrap 95% CI; "
                  "p-values of the t-test / Wilcoxon signed-rank test (two-sided)", "",
                  "| pair | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for first, second in itertools.combinations(arms, 2):
            cells = []
            for class_name in classes:
                first_values = metric_values(rows, name, first, class_name, metric)
                second_values = metric_values(rows, name, second, class_name, metric)
                test_result = paired_tests(first_values, second_values)
                cells.append(f"{format_difference(first_values, second_values)}; p {format_p(test_result.t_test_p)} "
                             f"/ {format_p(test_result.wilcoxon_p)}")
            lines.append(f"| {first} − {second} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{name}: per-volume scores]({figures['scores']})", "",
              f"![{name}: test slices, ground truth and predictions]({figures['slices']})", ""]
    return lines


def images_made(training: dict[str, Any]) -> str:
    """How an arm's training images were made: 'real', 'published brainSPADE (SPADE, styles from siteB)', ..."""
    parts = []
    if "real" in training:
        parts.append("real")
    if "synthetic" in training:
        synthetic = training["synthetic"]
        parts.append(SYNTHESES[synthetic["synthesis"]].images.format(site=synthetic["style_dataset"]))
    if "randomised" in training:
        parts.append(f"domain randomisation (label maps of {training['randomised']['labels_from']})")
    return " + ".join(parts)


def models_section(trained: dict[str, dict[str, Any]], folders: dict[str, str]) -> list[str]:
    """What each arm was trained on, and how its images were made (the published method or an extension)."""
    lines = ["## Models", "",
             "| arm | images | trained on | training slices | nnU-Net training | model folder |",
             "|---|---|---|---|---|---|"]
    for arm, training in trained.items():
        parts = []
        if "real" in training:
            real = training["real"]
            parts.append(f"real {real['dataset']} {real['modality']} (train split, {len(real['volumes'])} volumes: "
                         f"{', '.join(real['volumes'])}; {real['slices']} slices)")
        if "synthetic" in training:
            syn = training["synthetic"]
            parts.append(f"synthetic '{syn['samples']}' ({syn['slices']} pairs, styles from {syn['style_dataset']} "
                         f"{syn['style_modality']} train images, {syn['conditions']} labels)")
        if "randomised" in training:
            randomised = training["randomised"]
            parts.append(f"domain-randomised '{randomised['samples']}' ({randomised['slices']} pairs, SynthSeg-style "
                         f"images on the label maps of '{randomised['labels_from']}')")
        lines.append(f"| {arm} | {images_made(training)} | {' + '.join(parts)} | {training['slices']} | "
                     f"{_updates(training.get('updates'))} | {folders[arm]} |")
    return lines + [""]


def _updates(updates: dict[str, Any] | None) -> str:
    """'40 x 25 iterations, tumour weight 5' (unknown for arms trained before the report showed it)."""
    if not updates:
        return "not recorded"
    text = f"{updates['epochs']} x {updates['iterations_per_epoch']} iterations"
    weights = updates.get("class_weights") or {}
    return text + "".join(f", {label} weight {weight:g}" for label, weight in weights.items())


@in_plain_style
def plot_scores(path: Path, evaluation: Evaluation, rows: Sequence[dict[str, Any]]) -> None:
    """Box plots of per-volume scores: one panel per metric, classes on x, one box per arm."""
    import matplotlib.pyplot as plt

    name, arms, classes, metrics = evaluation.name, evaluation.arms, evaluation.classes, evaluation.metrics
    panel_width = 1.5 + 0.45 * len(classes) * len(arms)
    figure, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    width = 0.8 / len(arms)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for a, arm in enumerate(arms):
            data = [[v for v in metric_values(rows, name, arm, c, metric) if not math.isnan(v)] for c in classes]
            positions = [k + (a - (len(arms) - 1) / 2) * width for k in range(len(classes))]
            boxes = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, manage_ticks=False,
                                 medianprops={"color": "black"})
            for box in boxes["boxes"]:
                box.set_facecolor(colours(a))
            axis.plot([], [], color=colours(a), linewidth=6, label=arm)
        axis.set_xticks(range(len(classes)), classes)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(f"{name}: {METRIC_TITLES[metric]}")
        axis.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@in_plain_style
def plot_slices(
    path: Path, evaluation: Evaluation, volumes: list[TestVolume], predictions: dict[str, dict[str, np.ndarray]],
    classes: dict[str, int], count: int,
) -> None:
    """A grid: rows are test slices (spread over the volumes), columns image, ground truth, each arm."""
    import matplotlib.pyplot as plt

    arms = evaluation.arms
    labels = list(classes.values())
    candidates = [(v, k) for v in volumes for k in range(len(v.images)) if np.isin(v.truth[k], labels).any()]
    candidates = candidates or [(v, k) for v in volumes for k in range(len(v.images))]
    chosen = [candidates[int(i)] for i in np.unique(np.linspace(0, len(candidates) - 1, count).round())]
    columns = ["image", "ground truth", *arms]
    figure, axes = plt.subplots(len(chosen), len(columns), figsize=(1.8 * len(columns), 1.6 * len(chosen) + 0.4),
                                squeeze=False)
    for r, (volume, k) in enumerate(chosen):
        panels = [volume.images[k], volume.truth[k], *[predictions[arm][volume.subject][k] for arm in arms]]
        for c, panel in enumerate(panels):
            axis = axes[r][c]
            if c == 0:
                axis.imshow(panel, cmap="gray")
            else:
                axis.imshow(LABEL_COLOURS[panel % len(LABEL_COLOURS)], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(columns[c], fontsize="small")
            if c == 0:
                axis.set_ylabel(f"{volume.subject}\nslice {int(volume.slice_indices[k])}", fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value
