"""`brainspade run-experiment iod|ood|lesion`: train the arms' nnU-Nets, test them, write the report.

Each arm's model (W/segmentation/models/<arm>) is trained once and reused by every
experiment naming it; the experiment folder W/experiments/<name> holds report.md,
results.csv, figures/ and predictions/, and is replaced as a whole when it is redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_folder
from brainspade.engine.stage import StageFolder, config_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.segmentation import evaluation as ev
from brainspade.segmentation import report
from brainspade.segmentation.arms import TrainedArm, ensure_arm
from brainspade.segmentation.nnunet import Segmenter
from brainspade.stages.common import select_device, stage_path, workdir


def run(cfg: DictConfig) -> Path:
    """Run the experiment named by `experiment`; return its folder."""
    name = str(cfg.experiment)
    evaluations = _evaluations(cfg, name)
    cache = SliceCache.open(require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data"))
    _check(evaluations, cache)
    arm_names = list(dict.fromkeys(arm for e in evaluations for arm in e["arms"]))
    arms = {arm: ensure_arm(cfg, cache, arm) for arm in arm_names}

    settings = {"evaluations": evaluations, "figure_slices": int(cfg.experiments.figure_slices),
                "mirroring": bool(cfg.segmentation.test_time_mirroring),
                "models": {arm: trained.fingerprint for arm, trained in arms.items()}}
    target = stage_path(cfg, "experiments") / name
    fingerprint = config_fingerprint(settings)
    if StageFolder(target, fingerprint).reusable(bool(cfg.force)):
        print(f"[run-experiment] {target} is up to date")
        return target
    with atomic_folder(target) as building:
        (building / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        counts = evaluate(cfg, name, evaluations, cache, arms, building)
        StageFolder(building, fingerprint).finish(
            {"report": "report.md", "results": "results.csv", "figures": "figures/", "predictions": "predictions/"},
            volumes=counts,
        )
    print(f"[run-experiment] report: {target / 'report.md'}")
    return target


def evaluate(
    cfg: DictConfig, name: str, evaluations: list[dict[str, Any]], cache: SliceCache, arms: dict[str, TrainedArm],
    folder: Path,
) -> dict[str, int]:
    """Predict every evaluation's test set with its arms, then write results.csv, figures and report.md."""
    device = select_device(cfg)
    rows: list[dict[str, Any]] = []
    sections: list[str] = []
    counts = {}
    segmenters: dict[str, Segmenter] = {}
    (folder / "figures").mkdir()
    for evaluation in evaluations:
        test = evaluation["test"]
        volumes = ev.load_test_set(cache, str(test["dataset"]), str(test["modality"]))
        counts[evaluation["name"]] = len(volumes)
        classes = {c: cache.channels.index(c) for c in evaluation["classes"]}
        predicted = folder / "predictions" / evaluation["name"]
        predicted.mkdir(parents=True)
        ev.write_slice_table(predicted / "slices.csv", volumes)
        predictions = {}
        for arm in evaluation["arms"]:
            if arm not in segmenters:
                segmenters[arm] = Segmenter(arms[arm].nnunet_root, arm, device, bool(cfg.segmentation.test_time_mirroring))
            predictions[arm] = ev.predict_test_set(segmenters[arm], volumes, f"{evaluation['name']} {arm}")
            for subject, labels in predictions[arm].items():
                ev.save_volume(predicted / arm / f"{subject}.nii.gz", labels)
            rows += ev.score(evaluation["name"], arm, volumes, predictions[arm], classes, evaluation["lesion_metrics"])
        figures = {"scores": f"figures/{evaluation['name']}_scores.png",
                   "slices": f"figures/{evaluation['name']}_slices.png"}
        report.plot_scores(folder / figures["scores"], evaluation, rows)
        report.plot_slices(folder / figures["slices"], evaluation, volumes, predictions, classes,
                           int(cfg.experiments.figure_slices))
        sections += report.evaluation_section(evaluation, rows, volumes, figures)
    report.write_results_csv(folder / "results.csv", rows)
    base = workdir(cfg)
    header = [
        f"# Experiment {name}",
        "",
        f"Workdir {base}, profile {cfg.get('profile_name', '?')}, seed {cfg.seed}. 2D nnU-Net v2 per arm "
        f"({cfg.segmentation.epochs} epochs x {cfg.segmentation.iterations_per_epoch} iterations). Per-volume "
        "scores are in results.csv, predicted volumes in predictions/. Dice is undefined (n/a, skipped) where "
        "a class is absent from both prediction and ground truth.",
        "",
    ]
    models = report.models_section({arm: arms[arm].training for arm in arms},
                                   {arm: str(arms[arm].folder.relative_to(base)) for arm in arms})
    (folder / "report.md").write_text("\n".join(header + models + sections))
    return counts


def _evaluations(cfg: DictConfig, name: str) -> list[dict[str, Any]]:
    known = cfg.experiments.evaluations
    if name not in known:
        raise BrainspadeError(f"experiment={name!r} is not defined; choose one of {sorted(known)}")
    return OmegaConf.to_container(known[name], resolve=True)


def _check(evaluations: list[dict[str, Any]], cache: SliceCache) -> None:
    """Classes must be channels of the data; background is never scored."""
    for evaluation in evaluations:
        unknown = [c for c in evaluation["classes"] if c not in cache.channels[1:]]
        if unknown:
            raise BrainspadeError(f"experiments.evaluations: classes {unknown} of {evaluation['name']!r} are not "
                                  f"foreground channels of the data ({cache.channels[1:]})")
