"""Tiny end-to-end runs of train-modisc and train-image-generator through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from brainspade.generation.images import ImageGenerator, ModalityClassifier
from tests.conftest import run_cli, workdir_with_slices

pytestmark = pytest.mark.slow  # end-to-end stage runs (profile=tiny)


def test_modisc_then_image_generator_write_metrics_and_load_through_the_api(tiny_slices, tmp_path, capsys):
    workdir = workdir_with_slices(tiny_slices, tmp_path / "w")

    code, _, err = run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny")
    assert code == 1 and "train-modisc" in err and len(err.strip().splitlines()) == 1  # needs the classifier first

    code, _, err = run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny",
                           "image_generator.weights.modality=0.2", "image_generator.weights.dataset=0.3")
    assert code == 2 and "must exceed" in err and len(err.strip().splitlines()) == 1  # a bad value: exit 2
    assert not (workdir / "image_generator").exists()  # refused before training started

    code, out, err = run_cli(capsys, "train-modisc", f"workdir={workdir}", "profile=tiny")
    assert code == 0, err
    modisc = json.loads((workdir / "modisc" / "metrics.json").read_text())
    assert modisc["modalities"] == ["FLAIR", "T1"] and modisc["datasets"] == ["siteA", "siteT"]
    assert 0 <= modisc["heldout"]["modality_accuracy"] <= 1 and 0 <= modisc["heldout"]["dataset_accuracy"] <= 1
    assert modisc["heldout"]["n"] > 0 and "siteC/FLAIR" in modisc["per_test_set"]
    assert "dataset_accuracy" not in modisc["per_test_set"]["siteC/FLAIR"]  # the data-set head knows source sets only

    code, out, err = run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny")
    assert code == 0, err
    folder = workdir / "image_generator"
    metrics = json.loads((folder / "metrics.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    modisc_manifest = json.loads((workdir / "modisc" / "manifest.json").read_text())
    assert manifest["classifier_fingerprint"] == modisc_manifest["fingerprint"]
    assert metrics["paired"]["n"] > 0 and -1 <= metrics["paired"]["ssim"] <= 1 and metrics["paired"]["mae_brain"] > 0
    assert set(metrics["style_transfer"]) == {"siteA/T1", "siteB/T1", "siteC/FLAIR", "siteN/T1", "siteT/FLAIR", "siteT/T1"}
    for entry in metrics["style_transfer"].values():
        assert 0 <= entry["modality_match"] <= 1
    assert "dataset_match" not in metrics["style_transfer"]["siteC/FLAIR"]
    assert any((folder / "tensorboard").iterdir())

    generator = ImageGenerator.from_folder(folder, torch.device("cpu"))
    classifier = ModalityClassifier.from_folder(workdir / "modisc", torch.device("cpu"))
    assert generator.size == (48, 64) and generator.channels[0] == "background"
    pv = torch.zeros(2, len(generator.channels), 48, 64)
    pv[:, 0] = 1
    images = generator.generate(pv, torch.randn(2, 1, 48, 64), [0, 1])
    assert images.shape == (2, 1, 48, 64) and torch.isfinite(images).all()
    modality, _ = classifier.predict(images)
    assert torch.allclose(modality.sum(dim=1), torch.ones(2))

    # A second call reuses the finished folder; an interrupted one (no manifest) resumes from the saved step.
    assert run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny")[0] == 0
    (folder / "manifest.json").unlink()
    code, out, _ = run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny",
                           "image_generator.steps=22")
    assert code == 0 and "resuming at step 20" in out


def test_image_generator_with_the_appearance_path_trains_and_its_styles_reach_the_image(tiny_slices, tmp_path,
                                                                                      capsys):
    """The style path end to end: appearance statistics + seeded noise + pair augmentation train,
    the checkpoint alone rebuilds the generator, and a noisier copy of a style slice gives another image."""
    from brainspade.generation.site_look.statistics import STATISTICS

    workdir = workdir_with_slices(tiny_slices, tmp_path / "w")
    assert run_cli(capsys, "train-modisc", f"workdir={workdir}", "profile=tiny")[0] == 0
    code, _, err = run_cli(capsys, "train-image-generator", f"workdir={workdir}", "profile=tiny",
                           "image_generator.style_appearance_input=true", "image_generator.generator.noise_input=true",
                           "image_generator.appearance_augmentation.probability=1.0")
    assert code == 0, err
    generator = ImageGenerator.from_folder(workdir / "image_generator", torch.device("cpu"))
    assert generator.appearance_input == list(STATISTICS)
    from brainspade.data.slice_cache import SliceCache

    cache = SliceCache.open(workdir / "slices")
    index = int(cache.image_indices(split="train", datasets=["siteA"])[10])
    style = torch.from_numpy(cache.image(index))[None, None]
    pv = torch.from_numpy(cache.pv_map(int(cache.image_table["label_index"][index])))[None]
    noisier = style + 0.5 * torch.randn_like(style)
    a, b = generator.generate(pv, style, [3]), generator.generate(pv, noisier, [3])
    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-4)
    torch.testing.assert_close(generator.generate(pv, style, [3]), a)  # seeded: the same image again
