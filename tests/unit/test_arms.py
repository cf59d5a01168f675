"""Arms and evaluations as the config writes them: each synthetic arm names how its images are made (the published
method or an extension), the report says so, and an evaluation scores the dev split only when asked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.segmentation.arms import SYNTHESES, ArmSpec, _describe
from brainspade.segmentation.evaluation import Evaluation, load_test_set, split_slice_indices
from brainspade.segmentation.report import models_section
from brainspade.stages.config import compose

SYNTHETIC = {"samples": "SF_n-ood", "style_dataset": "siteB", "style_modality": "T1", "conditions": "healthy"}


def test_each_synthesis_parses_and_an_unknown_or_missing_one_is_refused_naming_its_key():
    for synthesis in ("published", "site_model", "site_model_render", "quantile_map"):
        spec = ArmSpec.from_dict("SF_n-ood", {"synthetic": {**SYNTHETIC, "synthesis": synthesis}})
        assert spec.synthetic.synthesis == synthesis
        assert spec.as_dict()["synthetic"]["synthesis"] == synthesis  # the arm's fingerprint sees it
    assert set(SYNTHESES) == {"published", "site_model", "site_model_render", "quantile_map"}
    with pytest.raises(BrainspadeError) as refused:
        ArmSpec.from_dict("SF_n-ood", {"synthetic": {**SYNTHETIC, "synthesis": "cyclegan"}})
    message = str(refused.value)
    assert "experiments.arms.SF_n-ood.synthetic.synthesis='cyclegan'" in message and "\n" not in message
    assert all(choice in message for choice in SYNTHESES)
    with pytest.raises(BrainspadeError, match=r"experiments.arms.S.synthetic: give .*synthesis"):
        ArmSpec.from_dict("S", {"synthetic": SYNTHETIC})  # no default: every synthetic arm states its synthesis


def test_a_bad_synthesis_in_the_yaml_fails_the_config_check(tmp_path):
    from brainspade.stages.config import check_config

    cfg = compose("run-experiment", ["profile=tiny", f"workdir={tmp_path}",
                                     "experiments.arms.SF_n-ood.synthetic.synthesis=site_look"])
    with pytest.raises(BrainspadeError, match=r"experiments.arms.SF_n-ood.synthetic.synthesis='site_look': choose"):
        check_config(cfg)


@pytest.mark.parametrize("profile", ["cpu", "tiny"])
def test_each_arm_makes_its_set_with_its_own_site_look(profile, tmp_path, monkeypatch):
    """run-experiment's sample sets: the published arm without a site look, the extension with the profile's fitted
    site model on the SPADE, the ablation with that model's render alone."""
    from brainspade.stages import run_experiment

    cfg = compose("run-experiment", [f"profile={profile}", f"workdir={tmp_path}"])
    profile_look = run_experiment.section(cfg, "sampling").site_look
    asked = {}

    def make_sample_set(folder, generators, style, n, **kwargs):
        asked[folder.name] = (style.dataset, kwargs["sampling"])
        return folder

    monkeypatch.setattr("brainspade.generation.sample_set.make_sample_set", make_sample_set)
    monkeypatch.setattr(run_experiment, "generator_folders", lambda cfg, modality_filter: None)
    for arm in ("S_n-ood", "SF_n-ood", "F_n-ood", "S_f-ood", "SF_f-ood", "F_f-ood"):
        source = ArmSpec.from_dict(arm, cfg.experiments.arms[arm]).synthetic
        assert run_experiment.synthetic_samples(cfg, source, "") == tmp_path / "samples" / arm
    looks = {name: sampling.site_look for name, (_, sampling) in asked.items()}
    assert not looks["S_n-ood"].enabled and not looks["S_f-ood"].enabled  # the paper's method
    for site in ("n-ood", "f-ood"):
        extension, ablation = looks[f"SF_{site}"], looks[f"F_{site}"]
        assert extension.enabled and extension.method == "site_model"
        assert extension.generator_texture == profile_look.generator_texture
        assert ablation.enabled and ablation.method == "site_model" and ablation.generator_texture == 0
        # Everything else is the profile's: the fit's parameters and how sampling runs.
        for look in (extension, ablation):
            assert look.reference_images == profile_look.reference_images
        assert dataclasses.replace(asked[f"SF_{site}"][1], site_look=profile_look) == \
            run_experiment.section(cfg, "sampling")
    assert asked["SF_n-ood"][0] == asked["S_n-ood"][0] == "siteB" and asked["F_f-ood"][0] == "siteC"


def _training(arm: str, spec: dict, tmp_path: Path) -> dict:
    """What ensure_arm records for a generated arm (its sample set's header read from dataset.json)."""
    samples = tmp_path / arm
    samples.mkdir()
    (samples / "dataset.json").write_text(json.dumps({"numTraining": 40}))
    return _describe(ArmSpec.from_dict(arm, spec), None, samples)


def test_the_models_table_says_how_each_arms_images_were_made(tmp_path):
    def synthetic(samples, site, synthesis):
        return {"samples": samples, "style_dataset": site, "style_modality": "T1", "conditions": "healthy",
                "synthesis": synthesis}

    trained = {arm: _training(arm, spec, tmp_path) for arm, spec in {
        "S_n-ood": {"synthetic": synthetic("S_n-ood", "siteB", "published")},
        "SF_n-ood": {"synthetic": synthetic("SF_n-ood", "siteB", "site_model")},
        "F_n-ood": {"synthetic": synthetic("F_n-ood", "siteB", "site_model_render")},
        "Q_n-ood": {"synthetic": synthetic("Q_n-ood", "siteB", "quantile_map")},
        "D": {"randomised": {"samples": "D", "labels_from": "S_iod"}},
    }.items()}
    trained["R_iod"] = {"slices": 3, "real": {"dataset": "siteA", "modality": "T1", "split": "train",
                                              "volumes": ["a", "b"], "slices": 3}}
    lines = models_section(trained, {arm: f"segmentation/models/{arm}" for arm in trained})
    assert lines[2].startswith("| arm | images | trained on |")
    images = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in lines[4:] if line.startswith("|")}
    assert images == {
        "S_n-ood": "published brainSPADE (SPADE, styles from siteB)",
        "SF_n-ood": "extension: SPADE + fitted site model (styles from siteB)",
        "F_n-ood": "ablation: fitted site-model render (styles from siteB)",
        "Q_n-ood": "extension: SPADE + pooled quantile map (styles from siteB)",
        "D": "domain randomisation (label maps of S_iod)",
        "R_iod": "real",
    }


class _MemoryCache:
    """The slice cache's reads (its own methods) over tables and arrays held in memory."""

    image_indices = SliceCache.image_indices
    image = SliceCache.image
    pv_map = SliceCache.pv_map

    def __init__(self, folder: Path, splits: dict[str, str], dataset: str = "siteB"):
        """One data set's T1, three slices per subject (stored out of order), each subject in its split."""
        subjects = [subject for subject in splits for _ in range(3)]
        rng = np.random.default_rng(0)
        self.folder, self.channels = folder, ["background", "csf", "gm", "wm"]
        self.images = rng.normal(size=(len(subjects), 6, 8)).astype(np.float16)
        self.pv_maps = rng.dirichlet(np.ones(4), size=(len(subjects), 6, 8)).transpose(0, 3, 1, 2).astype(np.float16)
        self.image_table = {
            "label_index": np.arange(len(subjects)), "subject": np.array(subjects),
            "dataset": np.array([dataset] * len(subjects)), "modality": np.array(["T1"] * len(subjects)),
            "split": np.array([splits[s] for s in subjects]), "slice_index": np.tile([2, 0, 1], len(splits))}


def _cache(tmp_path: Path, splits: dict[str, str], dataset: str = "siteB") -> SliceCache:
    return _MemoryCache(tmp_path / "slices", splits, dataset)  # type: ignore[return-value]


def test_the_dev_split_is_scored_only_when_asked_and_refused_where_the_cache_has_none(tmp_path):
    cache = _cache(tmp_path, {"siteB_train_000": "train", "siteB_dev_000": "dev", "siteB_test_000": "test",
                              "siteB_test_001": "test"})
    dev = load_test_set(cache, "siteB", "T1", "dev")
    assert [volume.subject for volume in dev] == ["siteB_dev_000"]
    assert list(dev[0].slice_indices) == [0, 1, 2] and set(cache.image_table["split"][dev[0].image_indices]) == {"dev"}
    test = load_test_set(cache, "siteB", "T1")  # the report's split unless asked
    assert [volume.subject for volume in test] == ["siteB_test_000", "siteB_test_001"]
    without_dev = _cache(tmp_path, {"siteB_train_000": "train", "siteB_test_000": "test"})
    with pytest.raises(BrainspadeError) as refused:
        split_slice_indices(without_dev, "siteB", "T1", "dev")
    assert "no dev slices of data set 'siteB'" in str(refused.value) and "\n" not in str(refused.value)
    node = {"name": "n-ood", "test": {"dataset": "siteB", "modality": "T1"}, "arms": ["S"], "classes": ["csf"],
            "lesion_metrics": False}
    assert Evaluation.from_dict(node).split == "test"
    with pytest.raises(BrainspadeError, match=r"evaluation_split='val': choose one of test, dev"):
        dataclasses.replace(Evaluation.from_dict(node), split="val")


def test_run_experiment_refuses_a_dev_split_the_cache_lacks_before_any_training(tmp_path, monkeypatch, capsys):
    """`run-experiment iod evaluation_split=dev`: siteA (a source site) has no dev subjects, so nothing is trained."""
    from brainspade.stages import run_experiment

    cache = _cache(tmp_path, {"siteB_train_000": "train", "siteB_test_000": "test"})
    monkeypatch.setattr(run_experiment.SliceCache, "open", classmethod(lambda cls, folder: cache))
    monkeypatch.setattr(run_experiment, "require_complete", lambda folder, *names: folder)
    monkeypatch.setattr(run_experiment, "ensure_arms", lambda *args, **kwargs: pytest.fail("an arm was trained"))
    code, _, err = run_cli(capsys, "run-experiment", "iod", "evaluation_split=dev", f"workdir={tmp_path}",
                           "profile=tiny")
    assert code == 1 and "no dev slices of data set 'siteA' with modality 'T1'" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "run-experiment", "iod", "evaluation_split=val", f"workdir={tmp_path}",
                           "profile=tiny")
    assert code == 2 and "evaluation_split='val': choose test" in err  # refused with the config, before any work


def test_a_dev_report_scores_the_dev_split_into_its_own_folder(tmp_path, monkeypatch):
    """`evaluation_split=dev` reaches every evaluation, and its report never replaces the test report's folder."""
    from brainspade.segmentation.arms import TrainedArm
    from brainspade.stages import run_experiment

    cache = _cache(tmp_path, {"siteA_train_000": "train", "siteA_dev_000": "dev", "siteA_test_000": "test"}, "siteA")
    monkeypatch.setattr(run_experiment.SliceCache, "open", classmethod(lambda cls, folder: cache))
    monkeypatch.setattr(run_experiment, "require_complete", lambda folder, *names: folder)
    monkeypatch.setattr(run_experiment, "ensure_arms", lambda specs, models, *args, **kwargs:
                        {spec.name: TrainedArm(spec.name, models / spec.name, f"fingerprint of {spec.name}", {})
                         for spec in specs})
    scored = {}

    def evaluate(evaluations, cache, arms, settings, device, figure_slices, folder, header, base):
        for evaluation in evaluations:
            scored[evaluation.name] = [v.subject for v in load_test_set(cache, evaluation.test_dataset,
                                                                        evaluation.test_modality, evaluation.split)]
        (folder / "report.md").write_text("\n".join(header))
        return {name: len(subjects) for name, subjects in scored.items()}

    monkeypatch.setattr(run_experiment, "evaluate", evaluate)
    for split in ("dev", "test"):
        cfg = compose("run-experiment", ["experiment=iod", f"evaluation_split={split}", f"workdir={tmp_path}",
                                         "profile=tiny"])
        folder = run_experiment.run(cfg)
        assert scored == {"iod": [f"siteA_{split}_000"]}
        assert folder == tmp_path / "experiments" / ("iod" if split == "test" else "iod_dev")
    assert "dev split, for choosing settings" in (tmp_path / "experiments" / "iod_dev" / "report.md").read_text()
    assert "dev split" not in (tmp_path / "experiments" / "iod" / "report.md").read_text()


def test_a_site_model_arm_styled_by_a_source_site_is_refused(tmp_path):
    """A source site keeps the generator's look (no model is fitted to it): such an arm would be the published set."""
    from brainspade.stages.config import check_config

    cfg = compose("run-experiment", ["experiment=iod", "profile=tiny", f"workdir={tmp_path}",
                                     "experiments.arms.S_iod.synthetic.synthesis=site_model"])
    with pytest.raises(BrainspadeError, match=r"experiments.arms.S_iod.synthetic.synthesis=site_model: siteA is a source"):
        check_config(cfg)


def test_skipped_arms_leave_every_evaluation_with_their_relation_rows(tmp_path):
    from brainspade.stages.config import experiment_plan, section

    full = {e.name: e for e in experiment_plan(section(compose("run-experiment", ["profile=bench"]), "experiments"),
                                               "ood")[0]}
    cpu = {e.name: e for e in experiment_plan(section(compose("run-experiment", ["profile=cpu"]), "experiments"),
                                              "ood")[0]}
    assert {"SF_f-ood", "F_f-ood"} <= set(full["f-ood"].arms) and not {"SF_f-ood", "F_f-ood"} & set(cpu["f-ood"].arms)
    assert all("SF_f-ood" not in (r.better, r.worse) for r in cpu["f-ood"].relations)
    assert len(cpu["f-ood"].relations) < len(full["f-ood"].relations)
    # The demo keeps every paper finding testable, and the published method beside the extension on the site drawn
    # by other physics.
    for experiment in ("iod", "ood", "lesion"):
        bench = experiment_plan(section(compose("run-experiment", ["profile=bench"]), "experiments"), experiment)[0]
        demo = {e.name: e for e in experiment_plan(section(compose("run-experiment", ["profile=cpu"]), "experiments"),
                                                   experiment)[0]}
        for evaluation in bench:
            paper = [r for r in evaluation.relations if not r.finding.startswith("beyond the paper")]
            assert paper and all(r in demo[evaluation.name].relations for r in paper), evaluation.name
    assert {"S_x-ood", "SF_x-ood"} <= set(cpu["x-ood"].arms)
    assert any((r.better, r.worse) == ("SF_x-ood", "S_x-ood") for r in cpu["x-ood"].relations)
    with pytest.raises(BrainspadeError, match="experiments.skip_arms: S_nothing is not an arm"):
        experiment_plan(section(compose("run-experiment", ["profile=cpu", "experiments.skip_arms=[S_nothing]"]),
                                "experiments"), "ood")
