"""What every stage promises alike: one settings object per concern, force means
redo, checkpoints and finished folders of another schema refused in one line, bad values refused before work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from brainspade.engine.checkpoint import CHECKPOINT_NAME

REPO = Path(__file__).resolve().parents[2]
TINY = "profile=tiny"
STAGE_FOLDERS = {"train-label-vae": "label_vae", "train-label-ldm": "label_ldm", "train-modisc": "modisc",
                 "train-image-generator": "image_generator"}


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory) -> Path:
    """A private copy of the shared trained workdir (these tests retrain and overwrite its stages)."""
    copy = tmp_path_factory.mktemp("contracts") / "w"
    shutil.copytree(trained_workdir, copy, ignore=shutil.ignore_patterns("samples", "segmentation", "experiments"))
    return copy


def pv_maps(folder: Path, n: int) -> np.ndarray:
    return np.stack([np.load(folder / "pv" / f"syn_{i:06d}.npy") for i in range(n)])


@pytest.mark.slow
def test_sample_labels_and_sample_draw_the_same_maps_and_the_background_threshold_reaches_sample(workdir, capsys):
    args = [f"workdir={workdir}", TINY, "seed=3", "sampling.modality_filter=false"]
    assert run_cli(capsys, "sample-labels", "--n", "8", *args)[0] == 0
    assert run_cli(capsys, "sample", "--n", "8", *args, "name=plain")[0] == 0
    labels_only, paired = pv_maps(workdir / "label_samples", 8), pv_maps(workdir / "samples" / "plain", 8)
    np.testing.assert_array_equal(labels_only, paired)

    code, _, err = run_cli(capsys, "sample", "--n", "8", *args, "name=thresholded",
                           "label_sampling.background_threshold=0.3")
    assert code == 0, err
    thresholded = pv_maps(workdir / "samples" / "thresholded", 8)
    background = 0
    assert (thresholded[:, background] >= paired[:, background] - 1e-3).all()
    assert (thresholded.argmax(axis=1) == background).sum() > (paired.argmax(axis=1) == background).sum()


@pytest.mark.slow
@pytest.mark.parametrize("command", list(STAGE_FOLDERS))
def test_force_retrains_a_finished_stage_from_step_0(workdir, capsys, command):
    folder = workdir / STAGE_FOLDERS[command]
    section = STAGE_FOLDERS[command]
    code, out, err = run_cli(capsys, command, f"workdir={workdir}", TINY, f"{section}.steps=3", "force=true")
    assert code == 0, err
    assert "resuming" not in out + err
    state = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 3 and json.loads((folder / "manifest.json").read_text())["steps"] == 3
    # Back to the shared configuration for the tests that follow.
    assert run_cli(capsys, command, f"workdir={workdir}", TINY, "force=true")[0] == 0


@pytest.mark.slow
def test_a_label_vae_of_another_schema_is_refused_by_train_label_ldm_in_one_line(workdir, tmp_path, capsys):
    other = tmp_path / "w"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("label_ldm", "samples", "label_samples"))
    checkpoint = other / "label_vae" / CHECKPOINT_NAME
    state = torch.load(checkpoint, weights_only=True)
    state["signature"]["channels"] = ["background", "csf", "gm", "wm"]
    torch.save(state, checkpoint)
    code, _, err = run_cli(capsys, "train-label-ldm", f"workdir={other}", TINY)
    lines = [line for line in err.strip().splitlines() if line.startswith("brainspade")]
    assert code == 1 and len(lines) == 1
    assert str(other / "label_vae") in lines[0] and "channels" in lines[0] and "force=true" in lines[0]
    assert not (other / "label_ldm" / "manifest.json").exists()


@pytest.mark.slow
def test_an_image_generator_of_another_schema_is_refused_by_sample_in_one_line(workdir, tmp_path, capsys):
    other = tmp_path / "w"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("samples", "label_samples"))
    checkpoint = other / "image_generator" / CHECKPOINT_NAME
    state = torch.load(checkpoint, weights_only=True)
    state["signature"]["channels"] = ["background", "csf", "gm", "wm"]
    torch.save(state, checkpoint)
    code, _, err = run_cli(capsys, "sample", "--n", "4", f"workdir={other}", TINY)
    lines = [line for line in err.strip().splitlines() if line.startswith("brainspade")]
    assert code == 1 and len(lines) == 1 and str(other / "image_generator") in lines[0] and "channels" in lines[0]


@pytest.mark.parametrize(("override", "key"), [
    ("seed=abc", "seed"), ("seed=1.5", "seed"), ("label_vae.steps=-5", "label_vae.steps"),
    ("label_vae.lr=fast", "label_vae.lr"), ("device=tpu", "device"), ("runtime.compile=maybe", "runtime.compile"),
    ("label_sampling.slice_range=[0.9,0.1]", "label_sampling.slice_range"),
    ("label_vae.model.width=3", "label_vae.model.width"), ("modisc.augment.bias_field=-1", "modisc.augment.bias_field"),
    ("image_generator.weights.dataset=0.9", "image_generator.weights"),
])
def test_bad_values_fail_in_one_line_naming_the_key_before_any_work(tmp_path, capsys, override, key):
    code, out, err = run_cli(capsys, "train-label-vae", f"workdir={tmp_path / 'w'}", TINY, override)
    assert code == 2 and len(err.strip().splitlines()) == 1 and key in err, err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("count", ["abc", "2.5", "0"])
def test_a_sample_count_that_is_not_a_positive_whole_number_is_refused(tmp_path, capsys, count):
    code, _, err = run_cli(capsys, "sample", "--n", count, f"workdir={tmp_path / 'w'}", TINY)
    assert code == 2 and "n=" in err and len(err.strip().splitlines()) == 1


def test_a_model_node_argument_the_constructor_does_not_take_is_named(tmp_path, capsys):
    from brainspade.errors import BrainspadeError
    from brainspade.models.label_vae import LabelVAE
    from brainspade.training.models import build

    with pytest.raises(BrainspadeError, match=r"label_vae.model.widths: not an argument of LabelVAE \(it takes"):
        build(LabelVAE, {"num_channels": 4, "widths": [8]}, "label_vae.model")


def test_no_config_object_below_the_stages_and_nothing_imports_the_stages_upwards():
    lower = ["generation", "segmentation", "data", "engine", "models", "losses", "diffusion", "training"]
    for package in lower:
        for path in (REPO / "brainspade" / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"omegaconf|DictConfig", text), path
            assert "brainspade.stages" not in text, path
    probe = ("import sys, brainspade.training.image_generator, brainspade.training.label_ldm, "
             "brainspade.segmentation.arms, brainspade.generation.pairs; "
             "print(sorted(m for m in sys.modules if m.startswith(('omegaconf', 'hydra', 'brainspade.stages'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert loaded.stdout.strip() == "[]"
