"""The protocol, measured: what training, sampling, the site look's fit and the style match read of the slice cache.

Target sites are the scanners a lab wants to segment: their train images are unlabelled style images, their dev
subjects are for choosing settings, their test subjects for the report only. Nothing before the report may read
a target test image, and nothing but an R_<site> reference arm (and a measurement on dev subjects) a target label.
"""

from __future__ import annotations

import pytest
from cache_reads import CacheReads, recording
from conftest import TRAINING_COMMANDS, run_cli

from brainspade.stages.config import compose

pytestmark = pytest.mark.slow  # samples from the shared trained tiny workdir

SPLITS = ["train", "dev", "test"]
TARGETS = list(compose("sample", ["profile=tiny"]).data.target_datasets)


def test_the_generators_train_on_source_data_only_and_read_no_target_test_image(training_reads):
    assert training_reads.labels["train-label-vae"] and training_reads.images["train-image-generator"]
    for command in TRAINING_COMMANDS:
        assert training_reads.images[command] or training_reads.labels[command], f"{command}: no read recorded"
        # A target's train images are style images (the SPADE's evaluation styles with them, as `sample` does) and its
        # dev subjects may be measured (the classifier's modality accuracy on an unseen site).
        assert training_reads.read("images", command, TARGETS, ["test"]) == [], command
        assert training_reads.read("labels", command, TARGETS, ["train", "test"]) == [], command


@pytest.mark.parametrize("style, extra", [
    ("siteB", []),
    ("siteB", ["sampling.site_look.enabled=true", "sampling.site_look.method=site_model",
               "sampling.site_look.reference_images=8"]),
    ("siteB", ["sampling.site_look.enabled=true", "sampling.site_look.method=quantile_map",
               "sampling.site_look.reference_images=8"]),
    ("siteC", []),
], ids=["published", "site_model", "quantile_map", "far"])
def test_sampling_and_the_site_look_read_target_train_images_and_no_target_label(capsys, trained_workdir, style,
                                                                                 extra):
    reads = CacheReads(phase="sample")
    modality = "FLAIR" if style == "siteC" else "T1"
    name = "access_" + "_".join([style, *(e.rsplit("=", 1)[1] for e in extra[1:2])])
    with recording(reads):
        code, _, err = run_cli(capsys, "sample", "--n", "4", f"workdir={trained_workdir}", "profile=tiny",
                               f"name={name}", f"style.dataset={style}", f"style.modality={modality}", *extra)
    assert code == 0, err
    assert reads.read("images", "sample", [style], ["train"]), "the style bank was not read: no instrument"
    assert reads.read("images", "sample", TARGETS, ["dev", "test"]) == []
    assert reads.read("labels", "sample", TARGETS, SPLITS) == []


def test_the_style_match_measures_target_sites_on_dev_subjects_only(trained_workdir):
    import numpy as np
    import torch

    from brainspade.data.slice_cache import SliceCache
    from brainspade.evaluation.style_match import style_match
    from brainspade.generation.images import ImageGenerator, ModalityClassifier

    reads = CacheReads(phase="style_match")
    with recording(reads):
        cache = SliceCache.open(trained_workdir / "slices")
        device = torch.device("cpu")
        generator = ImageGenerator.from_folder(trained_workdir / "image_generator", device, cache.channels)
        classifier = ModalityClassifier.from_folder(trained_workdir / "modisc", device, cache.channels)
        metrics = style_match(generator, classifier, cache, ["siteA", "siteT"], max_images=4, batch_size=4, seed=0)
    measured = {key.split("/")[0] for key in metrics["styles"]}
    assert set(TARGETS) <= measured, f"every target site is measured (on its dev subjects): {sorted(measured)}"
    assert reads.read("images", "style_match", TARGETS, ["test"]) == []
    assert reads.read("labels", "style_match", TARGETS, ["train", "test"]) == []
    assert np.isfinite(metrics["styles"]["siteB/T1"]["real"]["gm_wm"])
