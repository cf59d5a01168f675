"""`brainspade evaluate-generators`: score sample sets against real slices, in W/evaluation/<samples>.

Each sample set is its own stage folder (report.md, metrics.json, figures/, manifest written last):
a set scored with the same inputs and settings is skipped, so a re-run only scores what is new.
W/evaluation/summary.md holds one line per scored set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_text_atomic
from brainspade.engine.runtime import select_device
from brainspade.engine.stage import (
    MANIFEST_NAME,
    StageFolder,
    config_fingerprint,
    finished_fingerprint,
    require_complete,
)
from brainspade.errors import BrainspadeError
from brainspade.evaluation import report
from brainspade.evaluation.features import classifier_features, torchscript_features
from brainspade.evaluation.sample_sets import load_sample_set
from brainspade.evaluation.scoring import evaluate_sample_set
from brainspade.generation.images import ModalityClassifier
from brainspade.segmentation.nnunet import Segmenter
from brainspade.stages.config import resolved_yaml, run_settings, section, stage_path

COMMAND = "evaluate-generators"
DEFAULT_ARM = "R_iod"


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    settings, data = section(cfg, "evaluation"), section(cfg, "data")
    segmentation = section(cfg, "segmentation")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    names = sample_set_names(stage_path(cfg, "samples"), cfg.get("samples"))
    device = select_device(run_.device)
    cache = SliceCache.open(slices)
    if settings.feature_weights:
        features, feature_source = torchscript_features(settings.feature_weights, device), settings.feature_weights
        feature_key = feature_source
    else:
        modisc = require_complete(stage_path(cfg, "modisc"), "modality classifier", "train-modisc")
        classifier = ModalityClassifier.from_folder(modisc, device, cache.channels)
        features, feature_source = classifier_features(classifier.network), "pooled trunk of W/modisc (real slices)"
        feature_key = finished_fingerprint(modisc)
    arm, arm_folder = segmenter_arm(cfg, settings.segmenter_arm)
    inputs = [finished_fingerprint(slices), feature_key, finished_fingerprint(arm_folder) if arm_folder else arm,
              data.source_datasets, run_.seed, dataclasses.asdict(settings)]
    segmenter = None
    for name in names:
        samples_folder = stage_path(cfg, "samples") / name
        fingerprint = config_fingerprint(*inputs, finished_fingerprint(samples_folder))
        folder = StageFolder(stage_path(cfg, "evaluation") / name, fingerprint)
        if folder.is_up_to_date() and not run_.force:
            print(f"[{COMMAND}] {folder.path} is up to date")
            continue
        # A report nothing trains on: one made from other inputs (say, before R_iod existed) is simply redone.
        folder.prepare(resolved_yaml(cfg), force=True)
        if arm_folder is not None and segmenter is None:
            segmenter = Segmenter(arm_folder / "nnunet", arm, device, segmentation)
        samples = load_sample_set(samples_folder, settings.max_samples)
        print(f"[{COMMAND}] scoring {name} ({len(samples.case_ids)} samples, style {samples.style_modality})", flush=True)
        evaluate_sample_set(samples, cache, data.source_datasets, settings, features, feature_source,
                            segmenter.segment if segmenter else None, arm, device, run_.seed,
                            folder.path)
        folder.finish({"report": "report.md", "metrics": "metrics.json", "figures": "figures/"})
    return write_summary(stage_path(cfg, "evaluation"), names)


def sample_set_names(samples_root: Path, wanted: str | None) -> list[str]:
    """The finished sample sets to score: `wanted`, or every one in W/samples made by the learnt generators.

    Domain-randomised sets (`sample-randomised`, no `settings.yaml`) imitate no site: there is no style to score.
    """
    if wanted:
        folder = require_complete(samples_root / str(wanted), f"sample set {wanted!r}", "sample")
        if not (folder / "settings.yaml").is_file():
            raise BrainspadeError(f"{folder}: a domain-randomised set (sample-randomised) imitates no site; "
                                  "evaluate-generators scores sets made by `brainspade sample`")
        return [str(wanted)]
    names = sorted(p.name for p in samples_root.glob("*")
                   if (p / MANIFEST_NAME).is_file() and (p / "settings.yaml").is_file()) \
        if samples_root.is_dir() else []
    if not names:
        raise BrainspadeError(f"{samples_root}: no finished sample set; run `brainspade sample` with this workdir first")
    return names


def segmenter_arm(cfg: DictConfig, wanted: str | None) -> tuple[str, Path | None]:
    """(arm, its finished model folder) for consistency; without one, (why the section is skipped, None).

    The reason takes the arm's place, so the report names the segmenter or says why there is none.

    A named arm must exist; the default (R_iod) is used when an experiment has trained it.
    """
    arm = wanted or DEFAULT_ARM
    folder = stage_path(cfg, "segmentation") / "models" / arm
    if StageFolder(folder, "").is_complete():
        return arm, folder
    if wanted:
        require_complete(folder, f"nnU-Net of arm {arm!r}", "run-experiment")
    return f"no trained nnU-Net of {DEFAULT_ARM} in {folder.parent} yet (run `brainspade run-experiment iod`, " \
           "or name an arm with evaluation.segmenter_arm=ARM)", None


def write_summary(folder: Path, names: list[str]) -> Path:
    """W/evaluation/summary.md: one line per scored sample set (those of this run first)."""
    import json

    scored = [folder / name for name in names] + sorted(
        p for p in folder.glob("*") if p.name not in names and (p / MANIFEST_NAME).is_file())
    table = report.summary_table([json.loads((p / "metrics.json").read_text()) for p in scored
                                  if (p / MANIFEST_NAME).is_file()])
    write_text_atomic(folder / "summary.md", "# Sample sets scored by evaluate-generators\n\n" + table + "\n")
    print(f"[{COMMAND}] {folder / 'summary.md'}:\n{table}", flush=True)
    return folder
