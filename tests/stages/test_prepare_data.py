"""prepare-data: the slice cache from a user folder, and bad input rejected in one line."""

from __future__ import annotations

import csv
import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import folder_overrides, run_cli

from brainspade.data.slice_cache import SliceCache


def _prepare(capsys, root, workdir, *extra):
    return run_cli(capsys, "prepare-data", *folder_overrides(root, workdir), *extra)


def test_cache_has_valid_pv_maps_and_zscored_images(capsys, folder_dataset, tmp_path):
    code, out, err = _prepare(capsys, folder_dataset, tmp_path / "w")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(tmp_path / "w" / "slices")
    cache = SliceCache.open(tmp_path / "w" / "slices")
    assert cache.images.shape[1:] == (16, 16)
    assert cache.pv_maps.shape[1:] == (4, 16, 16)
    pv = np.stack([cache.pv_map(i) for i in range(len(cache.pv_maps))])
    assert pv.min() >= 0 and pv.max() <= 1
    np.testing.assert_allclose(pv.sum(axis=1), 1, atol=1e-3)
    # Every image slice points at its PV slice, and is z-scored inside the brain.
    for i in cache.image_indices(split="train"):
        brain = cache.pv_map(cache.image_table["label_index"][i])[0] < 0.5
        assert abs(cache.image(i)[brain].mean()) < 0.05
    assert set(cache.image_table["split"]) == {"train", "test"}
    positions = cache.label_table["slice_position"]
    assert positions.min() >= 0 and positions.max() <= 1


def test_integer_labels_become_one_hot_pv_maps(capsys, folder_dataset, tmp_path):
    for path in folder_dataset.glob("*_labels.nii.gz"):
        pv = nib.load(str(path))
        hard = np.argmax(pv.get_fdata(), axis=-1).astype(np.int16)
        nib.save(nib.Nifti1Image(hard, pv.affine), str(path))
    code, _, err = _prepare(
        capsys, folder_dataset, tmp_path / "w", "data.label_values={background: 0, csf: 1, gm: 2, wm: 3}"
    )
    assert code == 0, err
    cache = SliceCache.open(tmp_path / "w" / "slices")
    pv = np.asarray(cache.pv_maps, dtype=np.float32)
    assert set(np.unique(pv)) <= {0.0, 1.0}
    np.testing.assert_allclose(pv.sum(axis=1), 1)


def _corrupt(path):
    path.write_bytes(gzip.compress(b"this is not a NIfTI header at all"))


def _other_shape(path):
    pv = nib.load(str(path)).get_fdata()[:, :-2]
    nib.save(nib.Nifti1Image(pv.astype(np.float32), np.diag([2.0, 2, 2, 1])), str(path))


def _bad_sum(path):
    image = nib.load(str(path))
    pv = image.get_fdata().astype(np.float32)
    pv[..., 2] *= 0.8
    nib.save(nib.Nifti1Image(pv, image.affine), str(path))


def _nan_image(path):
    image = nib.load(str(path))
    data = image.get_fdata().astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def _wrong_channels(path):
    image = nib.load(str(path))
    nib.save(nib.Nifti1Image(image.get_fdata()[..., :3].astype(np.float32), image.affine), str(path))


@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [
        (_corrupt, "sub1_T1.nii.gz", "not a readable NIfTI"),
        (_other_shape, "sub1_labels.nii.gz", "grid"),
        (_bad_sum, "sub1_labels.nii.gz", "sum"),
        (_nan_image, "sub1_T1.nii.gz", "NaN"),
        (_wrong_channels, "sub1_labels.nii.gz", "channels"),
        (lambda p: p.unlink(), "sub1_T1.nii.gz", "not found"),
    ],
)
def test_bad_input_fails_in_one_line_and_keeps_the_old_cache(capsys, folder_dataset, tmp_path, damage, file, words):
    workdir = tmp_path / "w"
    assert _prepare(capsys, folder_dataset, workdir)[0] == 0
    before = (workdir / "slices" / "images.npy").read_bytes()
    damage(folder_dataset / file)
    code, _, err = _prepare(capsys, folder_dataset, workdir, "force=true")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert file in lines[0] and words in lines[0]
    assert "Traceback" not in err
    # The earlier, complete cache is untouched and nothing half-written is left beside it.
    assert (workdir / "slices" / "images.npy").read_bytes() == before
    assert (workdir / "slices" / "manifest.json").is_file()
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".slices")] == []


def test_paths_outside_the_root_are_refused(capsys, folder_dataset, tmp_path):
    manifest = folder_dataset / "manifest.csv"
    rows = list(csv.reader(manifest.open()))
    rows[1][4] = "../../etc/passwd"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    code, _, err = _prepare(capsys, folder_dataset, tmp_path / "w")
    assert code == 1 and "leaves the data root" in err


def test_unknown_source_dataset_is_refused(capsys, folder_dataset, tmp_path):
    code, _, err = _prepare(capsys, folder_dataset, tmp_path / "w", "data.source_datasets=[elsewhere]")
    assert code == 1 and "elsewhere" in err


def test_rerun_is_skipped_and_changed_config_needs_force(capsys, folder_dataset, tmp_path):
    workdir = tmp_path / "w"
    assert _prepare(capsys, folder_dataset, workdir)[0] == 0
    code, out, _ = _prepare(capsys, folder_dataset, workdir)
    assert code == 0 and "up to date" in out
    code, _, err = _prepare(capsys, folder_dataset, workdir, "slices.min_brain_fraction=0.2")
    assert code == 1 and "force=true" in err
    assert _prepare(capsys, folder_dataset, workdir, "slices.min_brain_fraction=0.2", "force=true")[0] == 0
