"""`brainspade run-experiment iod|ood|lesion`: train the arms' nnU-Nets, test them, write the report.

Each arm's model (W/segmentation/models/<arm>) is trained once and reused by every
experiment naming it; the experiment folder W/experiments/<name> holds report.md,
results.csv, figures/ and predictions/, and is replaced as a whole when it is redone.
`evaluation_split=dev` scores the dev subjects instead, into W/experiments/<name>_dev, so a
report for choosing settings never replaces the test report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import atomic_folder
from brainspade.engine.runtime import select_device
from brainspade.engine.stage import StageFolder, config_fingerprint, require_complete
from brainspade.errors import BrainspadeError
from brainspade.segmentation.arms import ArmSpec, RandomisedSource, SyntheticSource, ensure_arms
from brainspade.segmentation.evaluation import EVALUATION_SPLITS, split_slice_indices
from brainspade.segmentation.experiment import evaluate
from brainspade.settings import ExperimentSettings, SamplingSettings, SegmentationSettings
from brainspade.stages.config import (
    arm_segmentation,
    experiment_plan,
    generator_folders,
    run_settings,
    section,
    stage_path,
    without_arms,
    workdir,
)


def run(cfg: DictConfig) -> Path:
    """Run the experiment named by `experiment`; return its folder."""
    name = str(cfg.experiment)
    split = str(cfg.evaluation_split)
    if split not in EVALUATION_SPLITS:
        raise BrainspadeError(f"evaluation_split={split!r}: choose one of {', '.join(EVALUATION_SPLITS)}")
    experiments = section(cfg, "experiments")
    evaluations, specs = experiment_plan(experiments, name)
    evaluations = [dataclasses.replace(evaluation, split=split) for evaluation in evaluations]
    evaluations_config = [without_arms(node, experiments.skip_arms) for node in experiments.evaluations[name]]
    settings: SegmentationSettings = section(cfg, "segmentation")
    run_config = run_settings(cfg)
    device = select_device(run_config.device)
    cache = SliceCache.open(require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data"))
    for evaluation in evaluations:
        evaluation.check_classes(cache.channels)
        split_slice_indices(cache, evaluation.test_dataset, evaluation.test_modality, split)  # before any training
    arm_settings = {spec.name: arm_segmentation(cfg, spec) for spec in specs.values()}
    weighted = {label for arm in arm_settings.values() for label in arm.class_weights or {}}
    unknown = sorted(weighted - set(cache.channels))
    if unknown:
        raise BrainspadeError(f"segmentation.class_weights: {', '.join(unknown)} is not a label of the slice cache; "
                              f"use one of {', '.join(cache.channels)}")
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def samples(source: SyntheticSource | RandomisedSource) -> Path:
        return synthetic_samples(cfg, source, config_yaml)

    arms = ensure_arms(list(specs.values()), stage_path(cfg, "segmentation") / "models", cache, arm_settings, samples,
                       seed=run_config.seed, force=run_config.force, device=device, config_yaml=config_yaml,
                       at_once=experiments.parallel_arms)

    figure_slices = experiments.figure_slices
    fingerprint = config_fingerprint({"evaluations": evaluations_config, "figure_slices": figure_slices,
                                      "mirroring": settings.test_time_mirroring, "split": split,
                                      "models": {arm: trained.fingerprint for arm, trained in arms.items()}})
    target = stage_path(cfg, "experiments") / (name if split == "test" else f"{name}_{split}")
    if StageFolder(target, fingerprint).reusable(run_config.force):
        print(f"[run-experiment] {target} is up to date")
        return target
    header = [
        f"# Experiment {name}",
        "",
        *([] if split == "test" else [f"Scored on the {split} split, for choosing settings; the test split's report "
                                      f"is in {stage_path(cfg, 'experiments') / name}.", ""]),
        f"Workdir {workdir(cfg)}, profile {cfg.get('profile_name', '?')}, seed {run_config.seed}. 2D nnU-Net v2 per "
        f"arm ({settings.epochs} epochs x {settings.iterations_per_epoch} iterations unless the Models table says "
        "otherwise). Per-volume "
        "scores are in results.csv, predicted volumes in predictions/. Dice is undefined (n/a, skipped) where "
        "a class is absent from both prediction and ground truth.",
        "",
    ]
    with atomic_folder(target) as building:
        (building / "config.yaml").write_text(config_yaml)
        counts = evaluate(evaluations, cache, arms, settings, device, figure_slices, building, header, workdir(cfg))
        StageFolder(building, fingerprint).finish(
            {"report": "report.md", "results": "results.csv", "figures": "figures/", "predictions": "predictions/"},
            volumes=counts,
        )
    print(f"[run-experiment] report: {target / 'report.md'}")
    return target


def synthetic_samples(cfg: DictConfig, source: SyntheticSource | RandomisedSource, config_yaml: str) -> Path:
    """The finished sample set of a generated arm's source, made when missing.

    A learnt set is made with the profile's `sampling` whose site look is set by the source's synthesis (the
    published method: none); a randomised set first needs the synthetic set whose label maps it takes.
    """
    # Imported here: the generators are heavy, and only generated arms need them.
    from brainspade.generation.randomised_set import make_randomised_set
    from brainspade.generation.sample_set import StyleSource, make_sample_set

    experiments: ExperimentSettings = section(cfg, "experiments")
    run_config = run_settings(cfg)
    samples = stage_path(cfg, "samples")
    if isinstance(source, RandomisedSource):  # the label maps first: they are those of a synthetic arm
        synthetic_samples(cfg, _synthetic_source_named(experiments, source.labels_from), config_yaml)
        return make_randomised_set(samples / source.samples, samples / source.labels_from,
                                   section(cfg, "randomisation"), seed=run_config.seed, force=run_config.force,
                                   config_yaml=config_yaml)
    profile: SamplingSettings = section(cfg, "sampling")
    sampling = dataclasses.replace(profile, site_look=source.site_look(profile.site_look))
    return make_sample_set(
        samples / source.samples, generator_folders(cfg, sampling.modality_filter),
        StyleSource(source.style_dataset, source.style_modality), experiments.n_synthetic,
        sampling=sampling, labels=section(cfg, "label_sampling"), sources=section(cfg, "data").source_datasets,
        conditions=source.conditions, seed=run_config.seed, force=run_config.force, device=run_config.device)


def _synthetic_source_named(experiments: ExperimentSettings, samples: str) -> SyntheticSource:
    """The synthetic source (of any arm in experiments.arms) that makes sample set `samples`."""
    for name, spec in experiments.arms.items():
        synthetic = ArmSpec.from_dict(name, spec).synthetic
        if synthetic is not None and synthetic.samples == samples:
            return synthetic
    raise BrainspadeError(f"experiments.arms: a randomised arm takes its label maps from sample set {samples!r}, "
                          "but no synthetic arm makes it; name the `samples` of a synthetic arm in `labels_from`")
