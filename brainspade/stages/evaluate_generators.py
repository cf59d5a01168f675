"""`brainspade evaluate-generators`: score sample sets against real slices, in W/evaluation/<samples>.

Each sample set is its own stage folder (report.md, metrics.json, figures/, manifest written last):
a set scored with the same inputs and settings is skipped, so a re-run only scores what is new.
W/evaluation/summary.md holds one line per scored set.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_json_atomic, write_text_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime, select_device
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
from brainspade.evaluation.sample_sets import load_sample_set, missing_files
from brainspade.evaluation.scoring import evaluate_sample_set
from brainspade.evaluation.style_match import style_match, style_match_table
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.generation.site_look import LookStore
from brainspade.segmentation.nnunet import Segmenter
from brainspade.settings import StyleMatchSettings
from brainspade.stages.checks import named_folder
from brainspade.stages.config import resolved_config, resolved_yaml, run_settings, section, stage_path
from brainspade.training.modisc import train_classifier

COMMAND = "evaluate-generators"
DEFAULT_ARM = "R_iod"
# W/evaluation folders of the style-match report, not sample sets: the summary skips them.
STYLE_MATCH_FOLDERS = ("site_classifier", "style_match")


def run(cfg: DictConfig) -> Path:
    run_ = run_settings(cfg)
    settings, data = section(cfg, "evaluation"), section(cfg, "data")
    segmentation = section(cfg, "segmentation")
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    device = select_device(run_.device)
    cache = SliceCache.open(slices)
    if settings.style_match.site_look_sites:
        sites = sorted(set(cache.image_table["dataset"].tolist()))
        unknown = sorted(set(settings.style_match.site_look_sites) - set(sites))
        if unknown:
            raise BrainspadeError(f"evaluation.style_match.site_look_sites: {unknown} not among the sites of {slices} "
                                  f"{sites}; name some of them, or null for every one")
    names = sample_set_names(stage_path(cfg, "samples"), cfg.get("samples"), required=False)
    for name in names:  # a set with deleted cases is neither "up to date" nor read halfway through the scoring
        missing = missing_files(stage_path(cfg, "samples") / name)
        if missing:
            raise BrainspadeError(f"{stage_path(cfg, 'samples') / name}: {len(missing)} file(s) of its cases are gone "
                                  f"(e.g. {missing[0].relative_to(stage_path(cfg, 'samples') / name)}); re-run "
                                  f"`brainspade sample name={name}` with its settings, which remakes them")
    matched = style_match_report(cfg, settings.style_match, cache, slices, data.source_datasets, device)
    if not names:
        sample_set_names(stage_path(cfg, "samples"), cfg.get("samples"), required=matched is None)
        return stage_path(cfg, "evaluation")
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
                            segmenter.segment_slices if segmenter else None, arm, device, run_.seed,
                            folder.path)
        folder.finish({"report": "report.md", "metrics": "metrics.json", "figures": "figures/"})
    return write_summary(stage_path(cfg, "evaluation"), names)


def style_match_report(cfg: DictConfig, settings: StyleMatchSettings, cache: SliceCache, slices: Path,
                       sources: list[str], device) -> Path | None:
    """W/evaluation/style_match (report.md, metrics.json) for the workdir's image generator; None when off or absent.

    Its site classifier (W/evaluation/site_classifier) is trained once per slice cache and settings.
    """
    generator_folder = stage_path(cfg, "image_generator")
    if not settings.enabled or not StageFolder(generator_folder, "").is_complete():
        return None
    run_ = run_settings(cfg)
    datasets = sorted(set(cache.image_table["dataset"].tolist()))
    classifier_folder = StageFolder(stage_path(cfg, "evaluation") / STYLE_MATCH_FOLDERS[0],
                                    config_fingerprint(settings.site_classifier, run_.seed, finished_fingerprint(slices)))
    if run_.force or not classifier_folder.is_up_to_date():
        classifier_folder.prepare(resolved_yaml(cfg), force=True)
        print(f"[{COMMAND}] training the evaluation-only site classifier on train slices of {', '.join(datasets)}",
              flush=True)
        # Every site's train split, targets included: this classifier only measures, nothing trains on it.
        metrics = train_classifier(classifier_folder.path, cache, cache.image_indices(split="train"), datasets,
                                   settings.site_classifier, Runtime.create(section(cfg, "runtime"), run_.device),
                                   run_.seed, resolved_config(cfg))
        write_json_atomic(classifier_folder.path / "metrics.json", metrics)
        classifier_folder.finish({"checkpoint": CHECKPOINT_NAME, "metrics": "metrics.json"})
    # The site look as `sample` would fit it, measured whether or not `sample` applies it.
    sampling = section(cfg, "sampling")
    site_look = dataclasses.replace(sampling.site_look, enabled=True)
    folder = StageFolder(stage_path(cfg, "evaluation") / STYLE_MATCH_FOLDERS[1],
                         config_fingerprint(settings, run_.seed, sources, finished_fingerprint(generator_folder),
                                            finished_fingerprint(classifier_folder.path), site_look,
                                            sampling.batch_size))
    if folder.is_up_to_date() and not run_.force:
        print(f"[{COMMAND}] {folder.path} is up to date")
        return folder.path
    folder.prepare(resolved_yaml(cfg), force=True)
    site_classifier = ModalityClassifier.from_folder(classifier_folder.path, device, cache.channels)
    generator = ImageGenerator.from_folder(generator_folder, device, cache.channels)
    # The looks `sample` fitted for this generator (W/site_looks) are read back; those fitted here are kept for it.
    store = LookStore(stage_path(cfg, "site_looks"), finished_fingerprint(generator_folder))
    metrics = style_match(generator, site_classifier, cache, sources, settings.max_images, settings.batch_size,
                          run_.seed, site_look, sampling.batch_size, store, settings.site_look_sites)
    held = json.loads((classifier_folder.path / "metrics.json").read_text())
    metrics["site_classifier_heldout"] = {k: v.get("dataset_accuracy") for k, v in held["per_test_set"].items()}
    write_json_atomic(folder.path / "metrics.json", metrics)
    table = style_match_table(metrics)
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in metrics["site_classifier_heldout"].items())
    write_text_atomic(folder.path / "report.md", "# Does the style reach the image?\n\n"
                      f"Held-out source PV maps ({metrics['pv_maps']}) styled with train-split slices of each source; "
                      "tissue levels: mean intensity at PV > 0.9, each image's brain 1st-99th percentile rescaled "
                      "to [0, 1] (clipped); real = test-split images of the style's site. Each source also after the site "
                      "look `sample` applies with sampling.site_look.enabled=true (fitted the same way). "
                      "Site classifier (evaluation only) "
                      f"accuracy on real test slices: {accuracy}.\n\n{table}\n")
    print(f"[{COMMAND}] {folder.path / 'report.md'}:\n{table}", flush=True)
    return folder.finish({"report": "report.md", "metrics": "metrics.json"})


def sample_set_names(samples_root: Path, wanted: str | None, required: bool = True) -> list[str]:
    """The finished sample sets to score: `wanted`, or every one in W/samples made by the learnt generators.

    Without `required`, no finished set is no error (the style-match report was the work).

    Domain-randomised sets (`sample-randomised`, no `settings.yaml`) imitate no site: there is no style to score.
    """
    if wanted:
        if str(wanted) in STYLE_MATCH_FOLDERS:  # W/evaluation/<name> would be the style-match report's folder
            raise BrainspadeError(f"samples={wanted}: that name is the style-match report's folder in W/evaluation; "
                                  "rename the sample set (sample name=OTHER)")
        folder = require_complete(named_folder(samples_root, "samples", wanted), f"sample set {wanted!r}", "sample")
        if not (folder / "settings.yaml").is_file():
            raise BrainspadeError(f"{folder}: a domain-randomised set (sample-randomised) imitates no site; "
                                  "evaluate-generators scores sets made by `brainspade sample`")
        return [str(wanted)]
    names = sorted(p.name for p in samples_root.glob("*")
                   if (p / MANIFEST_NAME).is_file() and (p / "settings.yaml").is_file()) \
        if samples_root.is_dir() else []
    if not names and required:
        raise BrainspadeError(f"{samples_root}: no finished sample set; run `brainspade sample` with this workdir first")
    return names


def segmenter_arm(cfg: DictConfig, wanted: str | None) -> tuple[str, Path | None]:
    """(arm, its finished model folder) for consistency; without one, (why the section is skipped, None).

    The reason takes the arm's place, so the report names the segmenter or says why there is none.

    A named arm must exist; the default (R_iod) is used when an experiment has trained it.
    """
    arm = wanted or DEFAULT_ARM
    folder = named_folder(stage_path(cfg, "segmentation") / "models", "evaluation.segmenter_arm", arm)
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
        p for p in folder.glob("*")
        if p.name not in names and p.name not in STYLE_MATCH_FOLDERS and (p / MANIFEST_NAME).is_file())
    table = report.summary_table([json.loads((p / "metrics.json").read_text()) for p in scored
                                  if (p / MANIFEST_NAME).is_file()])
    write_text_atomic(folder / "summary.md", "# Sample sets scored by evaluate-generators\n\n" + table + "\n")
    print(f"[{COMMAND}] {folder / 'summary.md'}:\n{table}", flush=True)
    return folder
