"""The embedded phantom data set: layout, splits, label validity, contrasts, lesions, siteN's other physics, determinism."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import settings_of

from brainspade.data.phantom import (
    PHANTOM_CHANNELS,
    PHANTOM_LESION_CHANNELS,
    SITE_SPECS,
    SPLITS,
    build_phantom,
    load_templates,
    render_images,
    subject_rng,
)
from brainspade.errors import BrainspadeError
from brainspade.generation.site_look.scanner_model import mean_tissue_levels

# [train, dev, test] per site: every site has each split it has in the profiles (source sites no dev).
SMALL_COUNTS = {"siteA": (2, 0, 1), "siteB": (1, 1, 1), "siteC": (1, 1, 1), "siteT": (2, 0, 1), "siteN": (1, 1, 1)}
SEED = 7


@pytest.fixture(scope="module")
def other_physics():
    return settings_of("phantom").other_physics


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory, other_physics) -> Path:
    out_dir = tmp_path_factory.mktemp("phantom")
    build_phantom(out_dir, resolution_mm=4, subjects_per_site=SMALL_COUNTS, seed=SEED, other_physics=other_physics,
                  show_progress=False)
    return out_dir


@pytest.fixture(scope="module")
def manifest(phantom_dir: Path) -> list[dict[str, str]]:
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def load_array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def rows_of(manifest: list[dict[str, str]], site: str, modality: str | None = None) -> list[dict[str, str]]:
    return [row for row in manifest if row["dataset"] == site and modality in (None, row["modality"])]


def tissue_mean(image: np.ndarray, pv_maps: np.ndarray, tissue: str) -> float:
    """Mean intensity over voxels that are mostly ``tissue``."""
    return float(image[pv_maps[..., PHANTOM_CHANNELS.index(tissue)] > 0.6].mean())


def test_manifest_has_expected_columns_and_rows(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    with open(phantom_dir / "manifest.csv", newline="") as handle:
        assert handle.readline().strip() == "subject,dataset,modality,split,image,labels"
    expected_rows = sum(sum(counts) for counts in SMALL_COUNTS.values()) + sum(SMALL_COUNTS["siteT"])
    assert len(manifest) == expected_rows
    assert {row["modality"] for row in rows_of(manifest, "siteT")} == {"T1", "FLAIR"}
    for subject in {row["subject"] for row in rows_of(manifest, "siteT")}:
        subject_rows = [row for row in manifest if row["subject"] == subject]
        assert len(subject_rows) == 2 and subject_rows[0]["labels"] == subject_rows[1]["labels"]
    for row in manifest:
        assert row["image"] == f"{row['dataset']}/{row['subject']}_{row['modality']}.nii.gz"
        assert (phantom_dir / row["image"]).is_file() and (phantom_dir / row["labels"]).is_file()
    assert (phantom_dir / "overview.png").stat().st_size > 0


def test_every_site_has_its_dev_subjects_apart_from_train_and_test(manifest: list[dict[str, str]]) -> None:
    for site, counts in SMALL_COUNTS.items():
        subjects = {split: {row["subject"] for row in rows_of(manifest, site) if row["split"] == split} for split in SPLITS}
        labels = {split: {row["labels"] for row in rows_of(manifest, site) if row["split"] == split} for split in SPLITS}
        assert [len(subjects[split]) for split in SPLITS] == list(counts)
        assert subjects["dev"] == {f"{site}_dev_{index:03d}" for index in range(counts[1])}
        for first, second in (("train", "dev"), ("dev", "test"), ("train", "test")):
            assert not subjects[first] & subjects[second] and not labels[first] & labels[second]


def test_split_seed_codes_keep_the_train_and_test_subjects() -> None:
    # A subject's draws are seeded with (seed, site, split code, index); train and test keep the codes 0 and 1
    # they had before dev subjects existed, so adding dev subjects or a site moves no existing subject.
    for split, code in (("train", 0), ("test", 1)):
        expected = np.random.default_rng([SEED, zlib.crc32(b"siteB"), code, 3]).random(4)
        np.testing.assert_array_equal(subject_rng(SEED, "siteB", split, 3).random(4), expected)
    dev = subject_rng(SEED, "siteB", "dev", 0).random(4)
    assert not any(np.array_equal(dev, subject_rng(SEED, "siteB", split, 0).random(4)) for split in ("train", "test"))


def test_other_sites_subjects_do_not_depend_on_dev_subjects_or_site_n(phantom_dir: Path, tmp_path: Path) -> None:
    build_phantom(tmp_path, resolution_mm=4, subjects_per_site={"siteB": (1, 0, 1)}, seed=SEED, show_progress=False)
    for name in ("siteB_train_000_T1", "siteB_train_000_labels", "siteB_test_000_T1", "siteB_test_000_labels"):
        alone = (tmp_path / "siteB" / f"{name}.nii.gz").read_bytes()
        assert alone == (phantom_dir / "siteB" / f"{name}.nii.gz").read_bytes(), name


def test_images_are_3d_and_labels_4d_on_the_same_grid(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    for row in manifest:
        image, labels = nib.load(phantom_dir / row["image"]), nib.load(phantom_dir / row["labels"])
        assert image.ndim == 3 and labels.ndim == 4
        assert labels.shape == (*image.shape, len(PHANTOM_CHANNELS)) == (50, 59, 48, 6)
        np.testing.assert_allclose(image.affine, labels.affine)
        assert image.get_data_dtype() == np.float32 and labels.get_data_dtype() == np.float32


def test_pv_maps_are_in_unit_range_and_sum_to_one(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    for labels_path in {row["labels"] for row in manifest}:
        pv_maps = load_array(phantom_dir / labels_path)
        assert pv_maps.min() >= 0.0 and pv_maps.max() <= 1.0
        np.testing.assert_allclose(pv_maps.sum(axis=-1), 1.0, atol=1e-3)


def test_lesions_exist_in_site_t_and_nowhere_else(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    lesion_channels = [PHANTOM_CHANNELS.index(name) for name in PHANTOM_LESION_CHANNELS]
    for labels_path in {row["labels"] for row in manifest}:
        lesions = load_array(phantom_dir / labels_path)[..., lesion_channels]
        if labels_path.startswith("siteT/"):
            assert (lesions[..., 0] > 0.5).sum() > 0 and (lesions[..., 1] > 0.5).sum() > 0
        else:
            assert np.all(lesions == 0.0)


def test_flair_suppresses_csf(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    for row in rows_of(manifest, "siteC", "FLAIR"):
        image, pv_maps = load_array(phantom_dir / row["image"]), load_array(phantom_dir / row["labels"])
        assert tissue_mean(image, pv_maps, "csf") < tissue_mean(image, pv_maps, "gm")


def test_t1_contrast_of_the_other_scanner(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    for row in rows_of(manifest, "siteB", "T1"):
        image, pv_maps = load_array(phantom_dir / row["image"]), load_array(phantom_dir / row["labels"])
        wm, gm, csf = (tissue_mean(image, pv_maps, tissue) for tissue in ("wm", "gm", "csf"))
        assert wm > gm > csf


def test_lesions_are_bright_on_flair(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    for row in rows_of(manifest, "siteT", "FLAIR"):
        image, pv_maps = load_array(phantom_dir / row["image"]), load_array(phantom_dir / row["labels"])
        assert tissue_mean(image, pv_maps, "edema") > tissue_mean(image, pv_maps, "wm")


def pv_mix_residual(image: np.ndarray, pv_maps: np.ndarray) -> float:
    """RMS residual of the least-squares tissue-level mix (the site model's level fit), relative to the image's sd."""
    slices, maps = image.astype(np.float64), np.moveaxis(pv_maps, -1, 1)  # x as the slice axis
    levels = mean_tissue_levels(slices, maps)
    fit = (pv_maps * levels).sum(axis=-1)
    return float(np.sqrt(np.mean((slices - fit) ** 2)) / slices.std())


def test_site_n_is_not_a_tissue_level_mix(phantom_dir: Path, manifest: list[dict[str, str]]) -> None:
    # A PV mix of tissue levels (what data/intensity.py draws, and what a site model fits) explains siteB's
    # images up to its bias and noise; siteN's curve of real texture and k-space artefacts leave far more.
    residuals = {site: [pv_mix_residual(load_array(phantom_dir / row["image"]), load_array(phantom_dir / row["labels"]))
                        for row in rows_of(manifest, site, "T1")] for site in ("siteA", "siteB", "siteN")}
    assert max(residuals["siteA"]) < min(residuals["siteB"]) and max(residuals["siteB"]) < 0.2
    assert min(residuals["siteN"]) > max(residuals["siteB"])
    assert np.mean(residuals["siteN"]) > 1.5 * np.mean(residuals["siteB"])  # 0.25 against 0.14


def test_site_n_is_deterministic_and_differs_from_site_a_beyond_its_scanner(other_physics) -> None:
    # The template's own anatomy for every render, so only the acquisition differs.
    templates = load_templates(4)
    healthy = np.moveaxis(templates.healthy_pv, 0, -1)
    pv_maps = np.concatenate([healthy, np.zeros((*healthy.shape[:3], 2), np.float32)], axis=-1)
    brain = pv_maps[..., 0] < 0.5

    def render(site: str, seed: int) -> np.ndarray:
        image = render_images(np.random.default_rng(seed), SITE_SPECS[site], pv_maps, templates.t1,
                              templates.voxel_size_mm, other_physics)["T1"]
        return (image - image[brain].mean()) / image[brain].std()

    torch_state = torch.get_rng_state()
    site_n = render("siteN", 0)
    assert torch.equal(torch.get_rng_state(), torch_state)  # TorchIO's draws leave torch's generator as it was
    assert site_n.tobytes() == render("siteN", 0).tobytes()
    assert not np.array_equal(site_n, render("siteN", 1))
    site_a, site_a_again = render("siteA", 0), render("siteA", 1)
    scanner_effects = np.abs(site_a - site_a_again)[brain].mean()
    assert np.abs(site_n - site_a)[brain].mean() > 3 * scanner_effects


@pytest.mark.parametrize("knots", [{"curve_output": [0.0, 0.5, 0.4, 0.6, 0.7, 0.8, 0.9]},
                                   {"curve_input": [0.0, 0.5, 0.5, 0.6, 0.7, 0.8, 1.0]}, {"curve_input": [0.0, 1.0]}])
def test_site_n_curve_must_be_monotone_with_matching_knots(knots: dict) -> None:
    with pytest.raises(BrainspadeError, match="other_physics.curve_input"):
        settings_of("phantom", other_physics=knots)


@pytest.mark.parametrize("counts", [[1, 1], [1, 0, 1, 1], [1, -1, 1]])
def test_phantom_settings_take_train_dev_test_counts(counts: list[int]) -> None:
    with pytest.raises(BrainspadeError, match=r"phantom.subjects_per_site=\{siteA: .*\[train, dev, test\]"):
        settings_of("phantom", subjects_per_site={"siteA": counts})


def test_site_n_needs_its_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other_physics"):
        build_phantom(tmp_path, resolution_mm=4, subjects_per_site={"siteN": (1, 0, 0)}, seed=0, show_progress=False)


def test_same_seed_gives_identical_subject_and_other_seed_differs(
    phantom_dir: Path, tmp_path: Path
) -> None:
    # A subject depends on (seed, site, split, index) only, not on how many others are built.
    def build_one(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out_dir = tmp_path / name
        build_phantom(out_dir, resolution_mm=4, subjects_per_site={"siteT": (1, 0, 0)}, seed=seed, show_progress=False)
        return (load_array(out_dir / "siteT/siteT_train_000_labels.nii.gz"),
                load_array(out_dir / "siteT/siteT_train_000_FLAIR.nii.gz"))

    labels, flair = build_one("again", SEED)
    assert labels.tobytes() == load_array(phantom_dir / "siteT/siteT_train_000_labels.nii.gz").tobytes()
    assert flair.tobytes() == load_array(phantom_dir / "siteT/siteT_train_000_FLAIR.nii.gz").tobytes()
    other_labels, other_flair = build_one("other_seed", SEED + 1)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(flair, other_flair)


def test_subjects_differ_from_each_other(phantom_dir: Path) -> None:
    first = load_array(phantom_dir / "siteA/siteA_train_000_labels.nii.gz")
    second = load_array(phantom_dir / "siteA/siteA_train_001_labels.nii.gz")
    assert np.abs(first - second).mean() > 1e-3
    first_image = load_array(phantom_dir / "siteA/siteA_train_000_T1.nii.gz")
    second_image = load_array(phantom_dir / "siteA/siteA_train_001_T1.nii.gz")
    assert not np.array_equal(first_image, second_image)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"subjects_per_site": {"siteX": (1, 0, 1)}}, "unknown phantom site"),
        ({"resolution_mm": 3}, "resolution_mm"),
        ({"subjects_per_site": {"siteA": (1, 0, -1)}}, "non-negative"),
        ({"subjects_per_site": {"siteA": (1, 1)}}, "n_train, n_dev, n_test"),
        ({"subjects_per_site": {"siteA": (0, 0, 0)}}, "no subjects"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, arguments: dict, message: str) -> None:
    valid = {"resolution_mm": 4, "subjects_per_site": {"siteA": (1, 0, 0)}, "seed": 0}
    with pytest.raises(ValueError, match=message):
        build_phantom(tmp_path, **{**valid, **arguments}, show_progress=False)
