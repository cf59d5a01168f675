"""An experiment's evaluations: every arm segments every test set (its test or dev split); results.csv, figures
and report.md.

The arms are trained beforehand (`segmentation.arms.ensure_arm`); this module only predicts
and reports, into one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from brainspade.data.slice_cache import SliceCache
from brainspade.segmentation import evaluation as ev
from brainspade.segmentation import report
from brainspade.segmentation.arms import TrainedArm
from brainspade.segmentation.evaluation import Evaluation
from brainspade.segmentation.nnunet import Segmenter
from brainspade.settings import SegmentationSettings


def evaluate(
    evaluations: list[Evaluation], cache: SliceCache, arms: dict[str, TrainedArm], settings: SegmentationSettings,
    device: torch.device, figure_slices: int, folder: Path, header: list[str], base: Path,
) -> dict[str, int]:
    """Predict every evaluation's test set with its arms, then write results.csv, figures and report.md.

    Args:
        figure_slices: test slices shown in each evaluation's prediction grid.
        folder: the experiment folder being built (predictions/, figures/, results.csv, report.md).
        header: the opening lines of report.md.
        base: the workdir; the report shows model folders relative to it.

    Returns the number of test volumes of each evaluation.
    """
    rows: list[dict[str, Any]] = []
    sections: list[str] = []
    counts = {}
    segmenters: dict[str, Segmenter] = {}
    (folder / "figures").mkdir()
    for evaluation in evaluations:
        volumes = ev.load_test_set(cache, evaluation.test_dataset, evaluation.test_modality, evaluation.split)
        counts[evaluation.name] = len(volumes)
        classes = {c: cache.channels.index(c) for c in evaluation.classes}
        predicted = folder / "predictions" / evaluation.name
        predicted.mkdir(parents=True)
        ev.write_slice_table(predicted / "slices.csv", volumes)
        predictions = {}
        for arm in evaluation.arms:
            if arm not in segmenters:
                segmenters[arm] = Segmenter(arms[arm].nnunet_root, arm, device, settings)
            predictions[arm] = ev.predict_test_set(segmenters[arm], volumes, f"{evaluation.name} {arm}")
            for subject, labels in predictions[arm].items():
                ev.save_volume(predicted / arm / f"{subject}.nii.gz", labels)
            rows += ev.score(evaluation.name, arm, volumes, predictions[arm], classes, evaluation.lesion_metrics)
        figures = {"scores": f"figures/{evaluation.name}_scores.png", "slices": f"figures/{evaluation.name}_slices.png"}
        report.plot_scores(folder / figures["scores"], evaluation, rows)
        report.plot_slices(folder / figures["slices"], evaluation, volumes, predictions, classes, figure_slices)
        sections += report.evaluation_section(evaluation, rows, volumes, figures)
    report.write_results_csv(folder / "results.csv", rows)
    models = report.models_section({arm: arms[arm].training for arm in arms},
                                   {arm: str(arms[arm].folder.relative_to(base)) for arm in arms})
    relations = report.relations_section(evaluations, rows)
    (folder / "report.md").write_text("\n".join(header + relations + models + sections))
    return counts
