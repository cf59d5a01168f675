"""The embedded phantom data set: layout, label validity, contrasts, lesions and determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainspade.data.phantom import PHANTOM_CHANNELS, PHANTOM_LESION_CHANNELS, build_phantom

SMALL_COUNTS = {"siteA": (2, 1), "siteB": (1, 1), "siteC": (1, 1), "siteT": (2, 1)}
SEED = 7


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("phantom")
    build_phantom(out_dir, resolution_mm=4, subjects_per_site=SMALL_COUNTS, seed=SEED, show_progress=False)
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
    expected_rows = sum(n_train + n_test for n_train, n_test in SMALL_COUNTS.values()) + sum(SMALL_COUNTS["siteT"])
    assert len(manifest) == expected_rows
    for site in SMALL_COUNTS:
        assert {row["split"] for row in rows_of(manifest, site)} == {"train", "test"}
    assert {row["modality"] for row in rows_of(manifest, "siteT")} == {"T1", "FLAIR"}
    for subject in {row["subject"] for row in rows_of(manifest, "siteT")}:
        subject_rows = [row for row in manifest if row["subject"] == subject]
        assert len(subject_rows) == 2 and subject_rows[0]["labels"] == subject_rows[1]["labels"]
    for row in manifest:
        assert row["image"] == f"{row['dataset']}/{row['subject']}_{row['modality']}.nii.gz"
        assert (phantom_dir / row["image"]).is_file() and (phantom_dir / row["labels"]).is_file()
    assert (phantom_dir / "overview.png").stat().st_size > 0


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


def test_same_seed_gives_identical_subject_and_other_seed_differs(
    phantom_dir: Path, tmp_path: Path
) -> None:
    # A subject depends on (seed, site, split, index) only, not on how many others are built.
    def build_one(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        out_dir = tmp_path / name
        build_phantom(out_dir, resolution_mm=4, subjects_per_site={"siteT": (1, 0)}, seed=seed, show_progress=False)
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
        ({"subjects_per_site": {"siteX": (1, 1)}}, "unknown phantom site"),
        ({"resolution_mm": 3}, "resolution_mm"),
        ({"subjects_per_site": {"siteA": (1, -1)}}, "non-negative"),
        ({"subjects_per_site": {"siteA": (0, 0)}}, "no subjects"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, arguments: dict, message: str) -> None:
    valid = {"resolution_mm": 4, "subjects_per_site": {"siteA": (1, 0)}, "seed": 0}
    with pytest.raises(ValueError, match=message):
        build_phantom(tmp_path, **{**valid, **arguments}, show_progress=False)
