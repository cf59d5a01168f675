"""`brainspade sample`: outputs, per-sample determinism, resume after kill -9, shards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_cli, settings_of
from omegaconf import OmegaConf

from brainspade.data.registration import load_template
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import crop_or_pad
from brainspade.generation.sample_set import parse_shard

pytestmark = pytest.mark.slow
N = 16


def _sample_args(workdir: Path, name: str, *extra: str) -> list[str]:
    return ["sample", "--n", str(N), f"workdir={workdir}", "profile=tiny", f"name={name}", "sampling.batch_size=2", *extra]


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file of a samples folder except logs and timestamps, by relative path."""
    keep = ("imagesTr", "labelsTr", "pv", "samples.csv", "dataset.json")
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and str(p.relative_to(folder)).startswith(keep)
    }


@pytest.fixture(scope="module")
def full_run(trained_workdir):
    from brainspade.cli import main

    code = main(_sample_args(trained_workdir, "full"))
    assert code == 0
    return trained_workdir / "samples" / "full"


def test_sample_writes_an_nnunet_data_set(full_run):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    assert len(list((full_run / "imagesTr").glob("*_0000.nii.gz"))) == N
    assert len(list((full_run / "labelsTr").glob("*.nii.gz"))) == N
    rows = list(csv.DictReader((full_run / "samples.csv").open()))
    assert [int(r["id"]) for r in rows] == list(range(N))
    assert {"seed", "lesion_tumour", "slice_position", "style", "predicted_modality", "retries"} <= set(rows[0])
    assert all(r["style"].startswith("siteA/") for r in rows)  # the default style source
    pv = np.load(full_run / "pv" / "syn_000003.npy").astype(np.float32)
    assert pv.shape[0] == 6 and pv.min() >= 0 and pv.max() <= 1
    np.testing.assert_allclose(pv.sum(axis=0), 1, atol=2e-3)
    dataset = json.loads((full_run / "dataset.json").read_text())
    assert dataset["numTraining"] == N
    verify_dataset_integrity(str(full_run), num_processes=1)


def test_killed_run_resumes_to_identical_files(full_run, trained_workdir):
    name = "killed"
    # Not sharing full's label maps, so the LDM itself must draw the same maps again.
    command = [sys.executable, "-m", "brainspade", *_sample_args(trained_workdir, name, "sampling.share_label_maps=false")]
    # The reference ran in this process (conftest: 2 torch threads); another thread count sums in another order
    # (differences of 1e-5), so the subprocesses get the same count whatever OMP_NUM_THREADS the suite runs with.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    blocks = trained_workdir / "samples" / name / "blocks"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and len(list(blocks.glob("*.csv"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(blocks.glob("*.csv")))
    assert 0 < done_before < N // 2, "the run should have been killed part-way"
    assert not (trained_workdir / "samples" / name / "manifest.json").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert _files(trained_workdir / "samples" / name) == _files(full_run)
    leftovers = [p for p in (trained_workdir / "samples" / name).rglob(".*") if p.is_file()]
    assert leftovers == []


def test_two_shards_make_the_same_files_as_one_run(capsys, full_run, trained_workdir):
    for shard in ("0/2", "1/2"):
        code, _, err = run_cli(capsys, *_sample_args(trained_workdir, "sharded", f"shard={shard}",
                                                     "sampling.share_label_maps=false"))
        assert code == 0, err
    assert _files(trained_workdir / "samples" / "sharded") == _files(full_run)


def test_samples_do_not_depend_on_batch_size(capsys, full_run, trained_workdir):
    code, _, err = run_cli(capsys, "sample", "--n", "6", f"workdir={trained_workdir}", "profile=tiny",
                           "name=big_batches", "sampling.batch_size=3")
    assert code == 0, err
    for case in ("syn_000000", "syn_000004"):
        a = np.load(full_run / "pv" / f"{case}.npy").astype(np.float32)
        b = np.load(trained_workdir / "samples" / "big_batches" / "pv" / f"{case}.npy").astype(np.float32)
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_runs_differing_only_in_style_share_label_maps(capsys, monkeypatch, full_run, trained_workdir):
    from brainspade.generation.labels import LabelSampler

    def no_ldm(*args, **kwargs):
        raise AssertionError("the label maps should have been read from the run with the same label settings")

    monkeypatch.setattr(LabelSampler, "sample", no_ldm)
    code, _, err = run_cli(capsys, *_sample_args(trained_workdir, "siteB_styles", "style.dataset=siteB"))
    assert code == 0, err
    styled = _files(trained_workdir / "samples" / "siteB_styles")
    reference = _files(full_run)
    pv_files = [k for k in reference if k.startswith("pv/")]
    assert len(pv_files) == N and all(styled[k] == reference[k] for k in pv_files)
    image_files = [k for k in reference if k.startswith("imagesTr/")]
    assert sum(styled[k] != reference[k] for k in image_files) == N  # other styles, other images
    rows = list(csv.DictReader((trained_workdir / "samples" / "siteB_styles" / "samples.csv").open()))
    assert all(r["style"].startswith("siteB/") for r in rows)


def test_appearance_transfer_gives_the_style_sites_noise_on_the_same_label_maps(capsys, full_run, trained_workdir):
    """sampling.site_look (quantile map): siteB (a noisy scanner, not in the generator's training data) styles get
    noise on top of the generator's images; the label maps stay those of the other runs; the fit is recorded."""
    from brainspade.generation.site_look.quantile_map import measure_appearance

    args = _sample_args(trained_workdir, "siteB_transfer", "style.dataset=siteB", "sampling.site_look.enabled=true",
                        "sampling.site_look.reference_images=8")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "appearance transfer fitted on 8 style slices" in out
    folder = trained_workdir / "samples" / "siteB_transfer"
    transfer = json.loads((folder / "site_look.json").read_text())
    assert transfer["added_noise"] > 0 and len(transfer["site"]["quantiles"]) == 99
    moved, reference = _files(folder), _files(full_run)
    assert all(moved[k] == reference[k] for k in reference if k.startswith("pv/"))

    def images(run: Path) -> np.ndarray:
        return np.stack([np.asarray(nib.load(p).dataobj).squeeze() for p in sorted((run / "imagesTr").glob("*.nii.gz"))])

    plain = trained_workdir / "samples" / "siteB_styles"  # the same styles without the transfer
    if not plain.is_dir():  # made by the shared-label-maps test, unless this test runs alone
        assert run_cli(capsys, *_sample_args(trained_workdir, "siteB_styles", "style.dataset=siteB"))[0] == 0
    assert measure_appearance(images(folder)).noise > measure_appearance(images(plain)).noise


def test_bf16_sampling_makes_its_own_set_of_valid_pairs_stored_as_fp32_sets_are(capsys, full_run, trained_workdir):
    """runtime.precision=bf16: the networks under autocast; maps still sum to 1, files keep their dtypes, and the set
    neither reuses the fp32 set's label maps nor changes what an fp32 run is (that set stays up to date)."""
    code, _, err = run_cli(capsys, "sample", "--n", "2", f"workdir={trained_workdir}", "profile=tiny", "name=bf16",
                           "sampling.batch_size=2", "runtime.precision=bf16")
    assert code == 0, err
    folder = trained_workdir / "samples" / "bf16"
    pv = np.load(folder / "pv" / "syn_000001.npy")
    assert pv.dtype == np.float16
    np.testing.assert_allclose(pv.astype(np.float32).sum(axis=0), 1, atol=2e-3)
    assert nib.load(next((folder / "imagesTr").glob("*.nii.gz"))).get_data_dtype() == np.float32
    assert "precision: bf16" in (folder / "settings.yaml").read_text()
    fp32 = np.load(full_run / "pv" / "syn_000001.npy").astype(np.float32)
    assert 0 < np.abs(pv.astype(np.float32) - fp32).mean() < 0.05  # sampled again in bf16, close to fp32's map
    code, out, err = run_cli(capsys, *_sample_args(trained_workdir, "full"))
    assert code == 0 and "is up to date" in out, err


def test_shard_syntax_and_torchrun_ranks(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("0/1") == (2, 3)
    monkeypatch.delenv("RANK")
    from brainspade.errors import BrainspadeError

    with pytest.raises(BrainspadeError):
        parse_shard("3/2")


def test_bad_style_source_is_refused(capsys, trained_workdir):
    code, _, err = run_cli(capsys, "sample", "--n", "2", f"workdir={trained_workdir}", "profile=tiny",
                           "style.dataset=siteZ")
    assert code == 1 and "siteZ" in err and len(err.strip().splitlines()) == 1


def test_site_model_transfer_puts_the_fitted_site_levels_on_the_same_label_maps(capsys, full_run, trained_workdir):
    """sampling.site_look.method=site_model: the style site's scanner is fitted and recorded, the label
    maps stay those of the other runs, and each image carries the fitted tissue contrast (its label map is known)."""
    from brainspade.generation.site_look.scanner_model import mean_tissue_levels

    args = _sample_args(trained_workdir, "siteB_model", "style.dataset=siteB", "sampling.site_look.enabled=true",
                        "sampling.site_look.method=site_model", "sampling.site_look.reference_images=8")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "appearance transfer fitted on 8 style slices: site model: levels" in out
    folder = trained_workdir / "samples" / "siteB_model"
    model = json.loads((folder / "site_look.json").read_text())
    assert model["levels"][0] == 0.0 and max(model["levels"]) > 0 and model["misfit"] >= 0
    moved, reference = _files(folder), _files(full_run)
    assert all(moved[k] == reference[k] for k in reference if k.startswith("pv/"))
    keys = sorted(k[len("pv/"):-len(".npy")] for k in moved if k.startswith("pv/"))
    maps = np.stack([np.load(folder / "pv" / f"{key}.npy").astype(np.float64) for key in keys])
    images = np.stack([np.asarray(nib.load(folder / "imagesTr" / f"{key}_0000.nii.gz").dataobj).squeeze().T
                       for key in keys])
    levels, fitted = mean_tissue_levels(images, maps), np.array(model["levels"])
    fitted_tissues = [model["channels"].index(t) for t in ("csf", "gm", "wm")]  # what the fit determines
    assert np.corrcoef(levels[fitted_tissues], fitted[fitted_tissues])[0, 1] > 0.99  # the images have the fitted contrast


def test_site_model_leaves_a_source_sites_styles_as_the_generator_made_them(capsys, full_run, trained_workdir):
    """The site model is for sites the generator never learnt: with the source site's styles `sample` says it
    fits nothing and writes the very pairs of a run without the transfer."""
    args = _sample_args(trained_workdir, "source_model", "sampling.site_look.enabled=true",
                        "sampling.site_look.method=site_model", "sampling.site_look.reference_images=8")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "no appearance transfer for siteA" in out and "fitted" not in out
    folder = trained_workdir / "samples" / "source_model"
    assert not (folder / "site_look.json").exists()
    assert _files(folder) == _files(full_run)


def test_the_modality_filter_judges_the_generators_image_and_the_site_look_follows():
    """The filter checks the modality the generator made for the style (no transfer can change it, and the classifier
    knows only source sites); the appearance transfer then goes onto every accepted image."""
    from types import SimpleNamespace

    from brainspade.generation.pairs import PairSynthesiser
    from brainspade.generation.styles import StyleBank

    class Generator:  # a bright image, "T1" to the stub classifier below
        def generate(self, pv_maps, style_images, seeds):
            return torch.ones(len(pv_maps), 1, 8, 8)

    class DarkSite:  # a look the classifier would call FLAIR
        def apply(self, images, seeds, pv_maps):
            return -np.asarray(images)

    class Classifier:
        modalities = ["FLAIR", "T1"]

        def predict(self, images):
            t1 = (images.mean(dim=(1, 2, 3)) > 0).float()
            return torch.stack([1 - t1, t1], dim=1), torch.zeros(len(images), 1)

    bank = StyleBank(modality="T1", dataset="siteB", slices=np.zeros((3, 8, 8), np.float32), origins=["a", "b", "c"])
    synthesiser = PairSynthesiser(
        label_sampler=SimpleNamespace(lesion_channels=[]), image_generator=Generator(), style_bank=bank,
        draw_conditions=lambda seeds: torch.zeros(len(seeds), 1), seed=0, label_settings=None,
        classifier=Classifier(), max_retries=2, known_label_maps=lambda ids: torch.zeros(len(ids), 4, 8, 8),
        site_look=DarkSite())
    batch = synthesiser.make([0, 1, 2])
    assert [(r["predicted_modality"], r["retries"]) for r in batch.records] == [("T1", 0)] * 3
    assert (batch.images == -1).all()


def test_a_set_depends_on_the_site_look_keys_only_where_the_look_touches_it():
    """The look's keys enter a set's settings when the look is on and applies to the style source; a source
    site's styles keep the generator's look under the site model, so that set is the one made with the look off."""
    from brainspade.generation.sample_set import _sampling_keys

    sources = ["siteA", "siteT"]
    off = _sampling_keys(settings_of("sampling", site_look={"enabled": False}), "siteB", sources)
    assert "site_look" not in off
    quantiles = _sampling_keys(settings_of("sampling", site_look={"enabled": True}), "siteB", sources)
    assert quantiles["site_look"]["enabled"] is True and quantiles["site_look"]["method"] == "quantile_map"
    site_model = settings_of("sampling", site_look={"enabled": True, "method": "site_model"})
    assert _sampling_keys(site_model, "siteB", sources)["site_look"]["method"] == "site_model"
    assert _sampling_keys(site_model, None, sources)["site_look"]["method"] == "site_model"  # a folder
    assert _sampling_keys(site_model, "siteA", sources) == off
    assert _sampling_keys(settings_of("sampling", site_look={"enabled": True}), "siteA", sources)["site_look"]
    half = settings_of("sampling", site_look={"enabled": True, "method": "site_model", "generator_texture": 0.5})
    assert _sampling_keys(half, "siteB", sources) != _sampling_keys(site_model, "siteB", sources)


def _without_target_labels(phantom: Path, data: Path, target: str) -> None:
    """A copy of the phantom in `data` whose target `target` has no labels at all: its train rows lose their labels
    files, its other rows are dropped, and only the files the remaining rows name are copied."""
    rows = []
    for row in csv.DictReader((phantom / "manifest.csv").open()):
        if row["dataset"] == target:
            if row["split"] != "train":
                continue
            row = {**row, "labels": ""}
        rows.append(row)
    for relative in {row[c] for row in rows for c in ("image", "labels") if row[c]}:
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(phantom / relative, data / relative)
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sample_styles_with_a_target_site_that_has_no_labels(capsys, trained_workdir, tmp_path):
    """A lab's target site without labels: prepare-data reads its images in the template's brain (they are on its
    grid), as style images only, and `sample` styles with them; the generators only ever needed source labels."""
    workdir, data = tmp_path / "w", tmp_path / "data"
    for name in ("phantom", "label_vae", "label_ldm", "image_generator", "modisc"):
        shutil.copytree(trained_workdir / name, workdir / name)
    _without_target_labels(trained_workdir / "phantom", data, "siteB")
    assert "siteB" not in {row["dataset"] for row in csv.DictReader((data / "manifest.csv").open()) if row["labels"]}
    code, _, err = run_cli(capsys, "prepare-data", f"workdir={workdir}", "profile=tiny", f"data.root={data}")
    assert code == 0, err
    cache = SliceCache.open(workdir / "slices")
    site_b = cache.image_indices(datasets=["siteB"])
    assert len(site_b) and set(cache.image_table["label_index"][site_b]) == {-1}
    assert set(cache.image_table["split"][site_b]) == {"train"}
    resolution = OmegaConf.load(workdir / "slices" / "config.yaml").data.template_resolution_mm
    template_brain = load_template(resolution).brain
    for i in site_b[:: max(1, len(site_b) // 5)]:
        z = int(cache.image_table["slice_index"][i])
        np.testing.assert_array_equal(cache.brain(int(i)), crop_or_pad(template_brain[:, :, z], cache.size, fill=False))

    code, _, err = run_cli(capsys, "sample", "--n", "4", f"workdir={workdir}", "profile=tiny", f"data.root={data}",
                           "name=unlabelled_styles", "sampling.batch_size=2", "style.dataset=siteB")
    assert code == 0, err
    folder = workdir / "samples" / "unlabelled_styles"
    rows = list(csv.DictReader((folder / "samples.csv").open()))
    assert len(rows) == 4 and all(r["style"].startswith("siteB/") for r in rows)
    assert len(list((folder / "labelsTr").glob("*.nii.gz"))) == 4
