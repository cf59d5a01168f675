"""The label generator end to end at profile=tiny: train-label-vae, train-label-ldm, sample-labels --n 8."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, workdir_with_slices

from brainspade.engine.checkpoint import CHECKPOINT_NAME

pytestmark = pytest.mark.slow  # end-to-end stage runs (profile=tiny)

TINY = ["profile=tiny"]


@pytest.fixture(scope="module")
def tiny_workdir(tiny_slices, tmp_path_factory) -> Path:
    return workdir_with_slices(tiny_slices, tmp_path_factory.mktemp("labels"))


def test_label_generator_end_to_end_on_tiny_profile(tiny_workdir, capsys):
    workdir = f"workdir={tiny_workdir}"
    # Speed is a benchmark, not a test assertion (timed tests fail on a shared machine); ~35 s quiet.
    # The LDM's validation samples with the label_sampling settings `sample` uses (here eta 0, 7 steps).
    sampling = ["label_sampling.eta=0.0", "label_sampling.steps=7"]
    for command in (["train-label-vae"], ["train-label-ldm", *sampling], ["sample-labels", "--n", "8"]):
        code, out, err = run_cli(capsys, *command, workdir, *TINY)
        assert code == 0, err

    samples = tiny_workdir / "label_samples"
    maps = np.stack([np.load(samples / "pv" / f"syn_{i:06d}.npy").astype(np.float32) for i in range(8)])
    channels = json.loads((tiny_workdir / "slices" / "schema.json").read_text())["channels"]
    assert maps.shape == (8, len(channels), 48, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-3)
    with (samples / "conditions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {"id", "lesion_tumour", "lesion_edema", "slice_position"} <= set(rows[0])

    vae_metrics = json.loads((tiny_workdir / "label_vae" / "metrics.json").read_text())
    assert set(vae_metrics["dice"]) == set(channels) and vae_metrics["held_out_slices"] > 0
    ldm_metrics = json.loads((tiny_workdir / "label_ldm" / "metrics.json").read_text())
    for key in ("volume_w1_samples_vs_held_out", "volume_w1_train_vs_held_out"):
        assert set(ldm_metrics[key]) == set(channels)
    assert set(ldm_metrics["lesion_rate_conditioned_healthy"]) <= {"tumour", "edema"}
    assert ldm_metrics["label_sampling"]["eta"] == 0.0 and ldm_metrics["label_sampling"]["steps"] == 7
    assert (tiny_workdir / "label_ldm" / "tensorboard").is_dir()

    # Finished stages are reused, not retrained.
    code, out, _ = run_cli(capsys, "train-label-ldm", workdir, *TINY, *sampling)
    assert code == 0 and "up to date" in out


def test_interrupted_vae_training_resumes_at_its_checkpoint(tiny_workdir, capsys):
    folder = tiny_workdir / "label_vae_resume"
    shutil.copytree(tiny_workdir / "slices", folder / "slices")
    args = [*TINY]
    # An interrupted run: a checkpoint at step 6 of 10 and no manifest.
    code, _, err = run_cli(capsys, "train-label-vae", *args, "label_vae.steps=6", "label_vae.checkpoint_every=3",
                           f"workdir={folder}")
    assert code == 0, err
    (folder / "label_vae" / "manifest.json").unlink()
    saved = torch.load(folder / "label_vae" / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 6
    code, out, err = run_cli(capsys, "train-label-vae", *args, "label_vae.steps=10", "label_vae.checkpoint_every=3",
                             f"workdir={folder}")
    assert code == 0, err
    assert "resuming at step 6" in out
    assert torch.load(folder / "label_vae" / CHECKPOINT_NAME, weights_only=True)["step"] == 10


def test_checkpoint_of_another_schema_is_refused(tiny_workdir, capsys):
    folder = tiny_workdir / "label_vae_schema"
    shutil.copytree(tiny_workdir / "slices", folder / "slices")
    args = [f"workdir={folder}", *TINY, "label_vae.steps=2"]
    assert run_cli(capsys, "train-label-vae", *args)[0] == 0
    checkpoint = folder / "label_vae" / CHECKPOINT_NAME
    state = torch.load(checkpoint, weights_only=True)
    state["signature"]["channels"] = ["background", "csf", "gm", "wm"]
    torch.save(state, checkpoint)
    (folder / "label_vae" / "manifest.json").unlink()
    code, _, err = run_cli(capsys, "train-label-vae", *args, "label_vae.steps=4")
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.startswith("brainspade")]
    assert len(lines) == 1 and "checkpoint was made for channels" in lines[0] and str(checkpoint) in lines[0]


def test_resume_after_a_width_change_is_refused_in_one_line(tiny_workdir, capsys):
    folder = tiny_workdir / "label_vae_width"
    shutil.copytree(tiny_workdir / "slices", folder / "slices")
    args = [f"workdir={folder}", *TINY, "label_vae.steps=2"]
    assert run_cli(capsys, "train-label-vae", *args)[0] == 0
    (folder / "label_vae" / "manifest.json").unlink()  # an interrupted run, rerun with a wider VAE
    code, _, err = run_cli(capsys, "train-label-vae", *args, "label_vae.steps=4", "label_vae.model.channels=[16,32,64]")
    lines = [line for line in err.strip().splitlines() if line.startswith("brainspade")]
    assert code == 1 and len(lines) == 1 and "model_args" in lines[0] and "label_vae" in lines[0]
