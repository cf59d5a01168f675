"""evaluate-generators: the three verdicts that must be able to fail, the small pieces, and the stage."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import run_cli, settings_of

from brainspade.data.slice_cache import SliceCache
from brainspade.evaluation.features import classifier_features, extract
from brainspade.evaluation.metrics import (
    components_and_holes,
    consistency_dice,
    kid,
    mean_dice,
    mean_pairwise_ms_ssim,
    memorisation_scores,
    ms_ssim_weights,
    nearest,
    realism_scores,
)
from brainspade.models.modality_classifier import ModalityDatasetClassifier

SOURCES = ["siteA", "siteT"]


@pytest.fixture(scope="module")
def cache(tiny_slices) -> SliceCache:
    return SliceCache.open(tiny_slices / "slices")


def _images(cache: SliceCache, indices) -> np.ndarray:
    return np.stack([cache.image(int(i)) for i in indices])


def _labels(cache: SliceCache, indices) -> np.ndarray:
    return np.stack([cache.pv_map(int(cache.image_table["label_index"][i])) for i in indices]).argmax(axis=1)


def test_a_generator_that_copies_training_slices_is_flagged(cache):
    train = cache.label_indices(split="train", datasets=SOURCES)
    heldout = cache.label_indices(split="test", datasets=SOURCES)
    reference, fresh = heldout[::2], heldout[1::2]  # half the held-out slices play a generator of new slices
    rng = np.random.default_rng(0)
    copies = np.stack([cache.pv_map(int(i)) for i in rng.choice(train, 20)])

    def score(samples: np.ndarray) -> dict:
        reference_maps = np.stack([cache.pv_map(int(i)) for i in reference])
        return memorisation_scores(nearest(samples, cache.pv_maps, train), nearest(reference_maps, cache.pv_maps, train),
                                   flag_share=0.1)

    copying = score(copies)
    honest = score(np.stack([cache.pv_map(int(i)) for i in fresh]))
    assert copying["flagged"] and copying["share_closer_than_heldout"] == 1.0
    assert not honest["flagged"] and honest["share_closer_than_heldout"] <= 0.1


def test_noise_scores_a_far_worse_fid_and_kid_than_real_vs_real(cache):
    torch.manual_seed(0)  # an untrained trunk: any fixed offline network must tell noise from brains
    features = classifier_features(ModalityDatasetClassifier(2, 2, init_features=16, growth_rate=8, block_config=(2, 2, 2)))
    train, test = (cache.image_indices(split=s, modalities=["T1"]) for s in ("train", "test"))
    real = _images(cache, train)
    noise = np.random.default_rng(0).standard_normal(real.shape).astype(np.float32)  # z-scored noise slices

    def featurise(images):
        return extract(features, images, 64, torch.device("cpu"))

    scores = realism_scores(featurise(_images(cache, test)), featurise(noise), featurise(real), 100, 20, seed=0)
    synthetic, floor = scores["synthetic"], scores["real"]
    assert synthetic["fid"] > 10 * floor["fid"]
    assert synthetic["kid"] > 10 * max(floor["kid"], 1e-3 * synthetic["kid"])


def test_shuffled_label_image_pairs_score_a_far_lower_consistency_dice(cache):
    train = cache.image_indices(split="train", datasets=["siteA"], modalities=["T1"])
    test = cache.image_indices(split="test", datasets=["siteA"], modalities=["T1"])
    # A stand-in segmenter: each pixel gets the tissue whose mean training intensity is nearest.
    images, labels = _images(cache, train), _labels(cache, train)
    means = np.array([images[labels == k].mean() if (labels == k).any() else np.inf for k in range(len(cache.channels))])

    def segment(images: np.ndarray) -> np.ndarray:
        return np.abs(images[..., None] - means).argmin(axis=-1)

    test_images, test_labels = _images(cache, test), _labels(cache, test)
    predicted = segment(test_images)
    tissues = ["csf", "gm", "wm"]
    true_pairs = mean_dice(consistency_dice(predicted, test_labels, cache.channels), tissues)
    shuffled = mean_dice(consistency_dice(predicted, np.roll(test_labels, len(test) // 2, axis=0), cache.channels),
                         tissues)
    assert true_pairs > 0.5
    assert shuffled < 0.6 * true_pairs


def test_kid_is_zero_for_one_distribution_and_ms_ssim_uses_what_fits():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=generator), torch.randn(400, 8, generator=generator)
    assert abs(kid(a, b, 200, 20, seed=0)[0]) < 0.02
    assert kid(a, b + 1.0, 200, 20, seed=0)[0] > 0.1
    assert len(ms_ssim_weights((48, 64), 7)) == 3 and len(ms_ssim_weights((192, 256), 7)) == 5
    assert abs(sum(ms_ssim_weights((96, 128), 7)) - 1) < 1e-9
    same = np.repeat(np.random.default_rng(0).random((1, 48, 64)), 4, axis=0)
    assert mean_pairwise_ms_ssim(same, 5, 7, seed=0)[0] == pytest.approx(1.0, abs=1e-4)


def test_components_and_holes_of_a_ring_and_two_dots():
    yy, xx = np.mgrid[:20, :20]
    ring = (np.hypot(yy - 10, xx - 10) < 7) & (np.hypot(yy - 10, xx - 10) > 3)
    dots = np.zeros((20, 20), bool)
    dots[2, 2] = dots[15, 15] = True
    assert components_and_holes(ring) == (1, 1)
    assert components_and_holes(dots) == (2, 0)


@pytest.mark.slow
def test_evaluate_generators_writes_the_report_of_every_sample_set(capsys, trained_workdir):
    code, _, err = run_cli(capsys, "sample", "--n", "8", f"workdir={trained_workdir}", "profile=tiny", "name=eval_set")
    assert code == 0, err
    args = ("evaluate-generators", f"workdir={trained_workdir}", "profile=tiny", "samples=eval_set")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    folder = trained_workdir / "evaluation" / "eval_set"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["realism"]["synthetic"]["fid"] > 0 and metrics["realism"]["n_synthetic"] >= 2
    assert 0 <= metrics["diversity"]["synthetic"] <= 1
    assert set(metrics["label_realism"]["synthetic"]["volumes"]) == {"background", "csf", "gm", "wm", "tumour", "edema"}
    assert "no trained nnU-Net of R_iod" in metrics["consistency"]["skipped"]  # no experiment ran in this workdir
    assert 0 <= metrics["memorisation"]["labels"]["share_closer_than_heldout"] <= 1
    report = (folder / "report.md").read_text()
    assert "## Memorisation" in report and "real train split (floor)" in report
    for figure in ("grid", "intensities", "labels", "nearest_labels", "nearest_images"):
        assert (folder / "figures" / f"{figure}.png").stat().st_size > 1000
    assert "| eval_set | siteA/T1 | 8 |" in (trained_workdir / "evaluation" / "summary.md").read_text()
    assert (folder / "manifest.json").is_file()
    style_match = json.loads((trained_workdir / "evaluation" / "style_match" / "metrics.json").read_text())
    assert set(style_match["styles"]) == {"siteA/T1", "siteB/T1", "siteC/FLAIR", "siteN/T1", "siteT/T1", "siteT/FLAIR"}
    for entry in style_match["styles"].values():  # every site is a class of the evaluation-only classifier
        assert set(entry["site_shares"]) == {"siteA", "siteB", "siteC", "siteN", "siteT"}
        assert abs(sum(entry["site_shares"].values()) - 1) < 1e-6 and entry["real"]["gm_wm"] > 0
    assert "Does the style reach the image" in (trained_workdir / "evaluation" / "style_match" / "report.md").read_text()
    code, out, _ = run_cli(capsys, *args)  # finished with the same inputs: skipped
    assert code == 0 and "up to date" in out
    code, _, err = run_cli(capsys, *args[:-1], "samples=eval_set", "evaluation.segmenter_arm=R_nope")
    assert code == 1 and "R_nope" in err


def test_local_torchscript_feature_weights_give_the_same_features(tmp_path):
    from brainspade.evaluation.features import torchscript_features

    torch.manual_seed(0)
    network = ModalityDatasetClassifier(2, 2, init_features=8, growth_rate=4, block_config=(1, 1))
    direct = classifier_features(network)
    torch.jit.script(network.trunk).save(str(tmp_path / "trunk.pt"))  # a pooled map: the loader averages it
    loaded = torchscript_features(tmp_path / "trunk.pt", torch.device("cpu"))
    images = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    torch.testing.assert_close(extract(loaded, images, 2, torch.device("cpu")),
                               extract(lambda x: network.trunk(x).mean(dim=(2, 3)), images, 2, torch.device("cpu")))
    assert extract(direct, images, 2, torch.device("cpu")).shape == (3, network.modality_head.in_features)


def test_bad_evaluation_settings_fail_in_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate-generators", f"workdir={tmp_path}", "evaluation.ms_ssim_kernel=6")
    assert code == 2 and "ms_ssim_kernel" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "evaluate-generators", f"workdir={tmp_path}", "profile=tiny")
    assert code == 1 and "prepare-data" in err  # no slice cache in this workdir


def test_domain_randomised_sets_are_not_scored_as_generator_output(tmp_path):
    from brainspade.errors import BrainspadeError
    from brainspade.stages.evaluate_generators import sample_set_names

    for name, learnt in (("S_iod", True), ("D", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
        if learnt:
            (tmp_path / name / "settings.yaml").write_text("style_modality: T1\n")
    assert sample_set_names(tmp_path, None) == ["S_iod"]
    with pytest.raises(BrainspadeError, match="domain-randomised set"):
        sample_set_names(tmp_path, "D")


# ---------------------------------------------------------------- style match


def test_tissue_levels_rescale_each_brain_and_give_the_contrast_ratios():
    """Pure tissues at 0.2 / 0.6 / 1.0 (CSF / GM / WM): after the brain's 1st-99th percentile -> [0, 1],
    CSF 0, GM 0.5, WM 1; the same image brighter and shifted gives the same levels (a positive scale)."""
    from brainspade.evaluation.metrics import tissue_levels

    labels = np.zeros((1, 40, 40), dtype=int)
    labels[0, 5:35, 5:15], labels[0, 5:35, 15:25], labels[0, 5:35, 25:35] = 1, 2, 3
    pv = np.eye(4, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    image = np.einsum("nchw,c->nhw", pv, np.array([0.0, 0.2, 0.6, 1.0], dtype=np.float32))[:, None]
    channels = ["background", "csf", "gm", "wm"]
    levels = tissue_levels(image, pv, channels)
    assert levels["csf"] == pytest.approx(0.0, abs=1e-6) and levels["wm"] == pytest.approx(1.0, abs=1e-6)
    assert levels["gm_wm"] == pytest.approx(0.5, abs=1e-6) and levels["csf_gm"] == pytest.approx(0.0, abs=1e-6)
    assert tissue_levels(3 * image - 7, pv, channels) == pytest.approx(levels)
    assert "csf" not in tissue_levels(image, pv[:, [0, 2, 3]], ["background", "gm", "wm"])  # no CSF channel


class PaintT1:
    """A stub generator that paints the PV maps with a fixed T1 contrast whatever the style; counts its images."""

    def __init__(self):
        self.images = 0

    def generate(self, pv_maps, style_images, seeds):
        assert len(pv_maps) == len(style_images) == len(seeds)
        self.images += len(pv_maps)
        contrast = torch.tensor([0.0, 0.2, 0.6, 1.0, 0.3, 0.7])
        return torch.einsum("nchw,c->nhw", pv_maps, contrast)[:, None]


def _site_classifier(cache):
    from brainspade.generation.images import ModalityClassifier

    datasets = sorted(set(cache.image_table["dataset"].tolist()))
    network = ModalityDatasetClassifier(2, len(datasets), init_features=8, growth_rate=4, block_config=(1, 1))
    return ModalityClassifier(network, ["FLAIR", "T1"], datasets, torch.device("cpu"))


def test_style_match_scores_every_style_source_with_shares_over_every_site(cache):
    """A stub generator that paints the PV maps with a fixed T1 contrast whatever the style: every style
    source gets that contrast's ratios, and the site shares are a distribution over all sites."""
    from brainspade.evaluation.style_match import style_match, style_match_table

    site = _site_classifier(cache)
    metrics = style_match(PaintT1(), site, cache, SOURCES, max_images=6, batch_size=4, seed=0)
    assert set(metrics["styles"]) == {"siteA/T1", "siteB/T1", "siteC/FLAIR", "siteN/T1", "siteT/T1", "siteT/FLAIR"}
    ratios = {round(entry["generated"]["gm_wm"], 6) for entry in metrics["styles"].values()}
    assert len(ratios) == 1 and 0.3 < ratios.pop() < 0.8  # the style is ignored: one contrast for all
    flair = metrics["styles"]["siteC/FLAIR"]["real"]
    assert flair["gm_wm"] > 1 > metrics["styles"]["siteA/T1"]["real"]["gm_wm"]  # real FLAIR: GM brighter than WM
    for entry in metrics["styles"].values():
        assert abs(sum(entry["site_shares"].values()) - 1) < 1e-9 and entry["site_match"] is not None
    assert style_match_table(metrics).count("\n| site") == 6
    look = settings_of("sampling", site_look={"enabled": True, "reference_images": 8}).site_look
    moved = style_match(PaintT1(), site, cache, SOURCES, max_images=6, batch_size=4, seed=0, site_look=look)
    transferred = {k: v["with_appearance_transfer"] for k, v in moved["styles"].items()}
    # A source site gets no noise (its own images are the baseline); the painted images now take each site's levels.
    assert all("added noise sd 0.000" in transferred[k]["transfer"] for k in ("siteA/T1", "siteT/FLAIR"))
    assert len({round(v["generated"]["gm_wm"], 3) for v in transferred.values()}) > 1
    assert style_match_table(moved).count("\n| site") == 12
    modelled = style_match(PaintT1(), site, cache, SOURCES, max_images=6, batch_size=4, seed=0,
                           site_look=dataclasses.replace(look, method="site_model"))
    # The site model re-renders only sites the generator never learnt; source sites keep its images as they are.
    for entry in modelled["styles"].values():
        moved_entry = entry["with_appearance_transfer"]
        if entry["site"] in SOURCES:
            assert moved_entry["transfer"].startswith("none") and moved_entry["generated"] == entry["generated"]
        else:
            assert moved_entry["transfer"].startswith("site model") and moved_entry["generated"] != entry["generated"]


def test_style_match_reads_back_the_site_models_sample_fitted(cache, tmp_path):
    """A site model fitted for `sample` (W/site_looks) is not fitted again by the style match: the second run renders
    only what it measures, and measures the same looks."""
    from brainspade.evaluation.style_match import style_match
    from brainspade.generation.site_look import LookStore

    look = settings_of("sampling", site_look={"enabled": True, "reference_images": 8, "method": "site_model"}).site_look
    store = LookStore(tmp_path / "site_looks", "the generator's fingerprint")
    site = _site_classifier(cache)
    counted = [PaintT1(), PaintT1()]
    fitted, reread = (style_match(generator, site, cache, SOURCES, max_images=6, batch_size=4, seed=0, site_look=look,
                                  fit_batch_size=8, store=store) for generator in counted)
    targets = [k for k, v in fitted["styles"].items() if v["site"] not in SOURCES]
    assert targets and len(list(store.folder.glob("*.json"))) == len(targets)  # one model per target site
    assert reread == fitted
    # Without the fits: 6 styled images per style source; the fits rendered 8 reference images per target site.
    assert counted[1].images == 6 * len(fitted["styles"])
    assert counted[0].images >= counted[1].images + 8 * len(targets)


def test_the_style_match_fits_the_site_look_only_for_the_sites_named(cache, tmp_path):
    """`site_look_sites` (e.g. the one site the cpu demo's extension arm trains for) fits and measures the site look
    there only; every style source keeps the numbers of the generator alone that a run over every site gives."""
    from brainspade.evaluation.style_match import style_match
    from brainspade.generation.site_look import LookStore

    look = settings_of("sampling", site_look={"enabled": True, "reference_images": 8, "method": "site_model"}).site_look
    site = _site_classifier(cache)
    runs, counted = {}, {}
    for sites in (None, ["siteN"]):
        counted[str(sites)] = PaintT1()
        runs[str(sites)] = style_match(counted[str(sites)], site, cache, SOURCES, max_images=6, batch_size=4, seed=0,
                                       site_look=look, fit_batch_size=8,
                                       store=LookStore(tmp_path / str(sites), "fingerprint"), site_look_sites=sites)
    every, only = runs["None"]["styles"], runs["['siteN']"]["styles"]
    assert [k for k, v in only.items() if "with_appearance_transfer" in v] == ["siteN/T1"]
    assert only["siteN/T1"] == every["siteN/T1"]
    for key in set(only) - {"siteN/T1"}:
        assert only[key] == {k: v for k, v in every[key].items() if k != "with_appearance_transfer"}
    assert len(list((tmp_path / "['siteN']").glob("*.json"))) == 1
    assert counted["['siteN']"].images == 6 * len(only) + 8  # one fit of 8 reference renders


def test_a_site_look_site_the_slice_cache_lacks_is_refused_before_any_work(capsys, tiny_slices, tmp_path):
    from conftest import workdir_with_slices

    workdir = workdir_with_slices(tiny_slices, tmp_path / "w")
    code, _, err = run_cli(capsys, "evaluate-generators", f"workdir={workdir}", "profile=tiny",
                           "evaluation.style_match.site_look_sites=[siteN, siteX]")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "evaluation.style_match.site_look_sites: ['siteX']" in err and "siteN" in err.split("sites of")[1]
    assert not (workdir / "evaluation").exists()


def test_the_site_classifier_starts_from_its_seed_whatever_drew_numbers_before(cache, tmp_path):
    """evaluate-generators trains its site classifier after other work has drawn random numbers (in the demo, after every
    stage before it): the same seed must give the same classifier whatever the global generators hold."""
    from brainspade.engine.runtime import Runtime
    from brainspade.training.modisc import train_classifier

    settings = settings_of("modisc", steps=3, checkpoint_every=3, batch_size=4,
                           model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1]})
    datasets = sorted(set(cache.image_table["dataset"].tolist()))
    weights = []
    for state in (1, 2):
        torch.manual_seed(state)
        np.random.seed(state)
        folder = tmp_path / f"after_{state}"
        train_classifier(folder, cache, cache.image_indices(split="train"), datasets, settings,
                         Runtime.create(settings_of("runtime"), "cpu"), 0, {})
        weights.append(torch.load(folder / "checkpoint.pt", weights_only=False)["models"]["classifier"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
