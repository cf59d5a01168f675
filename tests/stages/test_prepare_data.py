"""prepare-data: the slice cache from a user folder, and bad input rejected in one line."""

from __future__ import annotations

import csv
import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import folder_overrides, run_cli, write_folder_dataset
from native_scans import native_from_template

from brainspade.data.datasets import ImageSlices, real_training_indices, style_image_indices
from brainspade.data.registration import load_template
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import crop_or_pad
from brainspade.errors import BrainspadeError


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
    # A threshold that only refuses scans changes nothing the cache holds: it stays up to date.
    code, out, _ = _prepare(capsys, folder_dataset, workdir, "data.min_similarity=0.2")
    assert code == 0 and "up to date" in out
    code, _, err = _prepare(capsys, folder_dataset, workdir, "slices.min_brain_fraction=0.2")
    assert code == 1 and "force=true" in err
    assert _prepare(capsys, folder_dataset, workdir, "slices.min_brain_fraction=0.2", "force=true")[0] == 0


def _sphere(shape=(20, 20, 10), radius=7.0, centre_shift=0.0) -> tuple[np.ndarray, np.ndarray]:
    """(brain, PV maps) of a ball: csf shell, gm, wm core, soft edges."""
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    grid[0] -= centre_shift
    distance = np.sqrt((grid**2).sum(axis=0))
    brain = np.clip(radius - distance + 0.5, 0, 1)
    wm = np.clip(radius * 0.5 - distance + 0.5, 0, 1)
    gm = np.clip(radius * 0.8 - distance + 0.5, 0, 1) - wm
    pv = np.stack([1 - brain, brain - gm - wm, gm, wm], axis=-1).astype(np.float32)
    return brain > 0.5, pv / pv.sum(axis=-1, keepdims=True)


def _add_target(root, rows, seed=0) -> None:
    """Append target data set 'lab' (a T2-like scanner nobody modelled) to root's manifest.

    rows: (subject, split, labels) with labels None (no labels file), "own" (its ball's PV maps) or
    "other" (a wrong, smaller and shifted ball: a target's labels must not change how its image is read).
    """
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    lines = []
    for i, (subject, split, labels) in enumerate(rows):
        _, pv = _sphere(radius=7.5 - 0.5 * i)
        image = pv @ np.array([0.0, 1.0, 0.55, 0.35], dtype=np.float32)  # bright CSF
        image += np.random.default_rng(seed + i).normal(0, 0.02, image.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(root / f"{subject}_T2.nii.gz"))
        labels_file = ""
        if labels is not None:
            labels_file = f"{subject}_{labels}_labels.nii.gz"
            written = pv if labels == "own" else _sphere(radius=5.0, centre_shift=2.0)[1]
            nib.save(nib.Nifti1Image(written, affine), str(root / labels_file))
        lines.append(f"{subject},lab,T2,{split},{subject}_T2.nii.gz,{labels_file}\n")
    with (root / "manifest.csv").open("a") as handle:
        handle.writelines(lines)


def test_an_unlabelled_target_gives_style_slices_masked_by_its_intensities(capsys, folder_dataset, tmp_path):
    """A target data set with no labels file at all: its slices are style images (label_index -1), z-scored in
    a brain found from the image's own intensities; the source's cache rows are those of a run without it."""
    assert _prepare(capsys, folder_dataset, tmp_path / "alone")[0] == 0
    _add_target(folder_dataset, [("lab0", "train", None), ("lab1", "train", None)])
    assert not list(folder_dataset.glob("lab*labels*"))
    code, _, err = _prepare(capsys, folder_dataset, tmp_path / "w", "data.target_datasets=[lab]")
    assert code == 0, err
    cache = SliceCache.open(tmp_path / "w" / "slices")
    alone = SliceCache.open(tmp_path / "alone" / "slices")
    table = cache.image_table
    lab = cache.image_indices(datasets=["lab"])
    assert len(lab) > 0 and set(table["split"][lab]) == {"train"}
    assert set(table["label_index"][lab]) == {-1} and len(cache.labelled(lab)) == 0
    assert "lab" not in set(cache.label_table["dataset"])
    np.testing.assert_array_equal(cache.pv_maps, alone.pv_maps)
    mine = cache.image_indices(datasets=["mysite"])
    np.testing.assert_array_equal(cache.images[mine], alone.images)
    np.testing.assert_array_equal(table["label_index"][mine], alone.image_table["label_index"])
    # Each slice is z-scored in its stored brain: the ball the image shows (no label map told it), with the
    # partial-volume rim its bright CSF lights up.
    truth, _ = _sphere(radius=7.5)
    for i in lab[table["subject"][lab] == "lab0"]:
        brain, image = cache.brain(i), cache.image(i)
        assert abs(image[brain].mean()) < 0.05 and abs(image[brain].std() - 1) < 0.05
        expected = truth[2:18, 2:18, table["slice_index"][i]]
        assert (brain & expected).sum() / expected.sum() > 0.97
        assert 2 * (brain & expected).sum() / (brain.sum() + expected.sum()) > 0.8
    # What reads labels refuses the target; what needs images only takes it.
    np.testing.assert_array_equal(style_image_indices(cache, "lab", "T2"), lab)
    with pytest.raises(BrainspadeError, match="no labelled train slices of data set 'lab'"):
        real_training_indices(cache, "lab", "T2", None)
    with pytest.raises(BrainspadeError, match="no PV map"):
        cache.pv_map(int(table["label_index"][lab[0]]))
    item = ImageSlices(cache, lab, ["T1", "T2"], ["mysite"])[0]
    np.testing.assert_allclose(item["pv_map"].sum(dim=0).numpy(), 1, atol=1e-6)
    np.testing.assert_array_equal(item["pv_map"][0].numpy() < 0.5, cache.brain(int(lab[0])))


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        # An unlabelled test image cannot be scored.
        (lambda rows: rows[3].__setitem__(5, ""), 4, "make it split=train"),
        # The generators learn from source labels.
        (lambda rows: rows[1].__setitem__(5, ""), 2, "data.target_datasets"),
    ],
    ids=["unlabelled_test_row", "unlabelled_source_row"],
)
def test_unlabelled_rows_that_would_be_scored_or_learnt_from_are_refused(capsys, folder_dataset, tmp_path, edit,
                                                                         line, words):
    manifest = folder_dataset / "manifest.csv"
    rows = list(csv.reader(manifest.open()))
    edit(rows)
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    code, _, err = _prepare(capsys, folder_dataset, tmp_path / "w")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert f"manifest.csv:{line}:" in lines[0] and words in lines[0]
    assert not (tmp_path / "w" / "slices").exists()


def test_a_target_images_reading_does_not_depend_on_its_label_map(capsys, tmp_path):
    """The same target image with its own labels, wrong labels or none gives the same cache slices; the labels,
    when given, are still read (reference arms and scoring need them)."""
    slices = {}
    for labels in ("own", "other", None):
        root = tmp_path / f"data_{labels}"
        write_folder_dataset(root)
        _add_target(root, [("lab0", "train", labels), ("lab1", "test", "own")])
        code, _, err = _prepare(capsys, root, tmp_path / f"w_{labels}", "data.target_datasets=[lab]")
        assert code == 0, err
        cache = SliceCache.open(tmp_path / f"w_{labels}" / "slices")
        lab0 = cache.image_indices(subjects=["lab0"])
        slices[labels] = (cache.image_table["slice_index"][lab0], np.asarray(cache.images[lab0]),
                          np.asarray(cache.brain_masks[lab0]), cache.image_table["label_index"][lab0])
    for labels in ("other", None):
        for got, expected in zip(slices[labels][:3], slices["own"][:3], strict=True):
            np.testing.assert_array_equal(got, expected)
    assert (slices["own"][3] >= 0).all() and (slices["other"][3] >= 0).all() and (slices[None][3] == -1).all()


def test_dev_rows_are_accepted(capsys, folder_dataset, tmp_path):
    manifest = folder_dataset / "manifest.csv"
    rows = list(csv.reader(manifest.open()))
    rows[2][3] = "dev"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert _prepare(capsys, folder_dataset, tmp_path / "w")[0] == 0
    cache = SliceCache.open(tmp_path / "w" / "slices")
    assert set(cache.image_table["split"]) == {"train", "dev", "test"}


def test_a_registered_unlabelled_scan_is_read_in_the_template_brain(capsys, tmp_path):
    """data.register=affine: an unlabelled target scan (FLAIR, its own grid and pose) is registered on its own and
    sliced and z-scored in the template's brain mask, on whose grid it now lies."""
    root, resolution = tmp_path / "data", 4
    root.mkdir()
    lines = ["subject,dataset,modality,split,image,labels"]
    scans = (("s0", "lab", "train", "siteA"), ("s1", "lab", "test", "siteA"), ("t0", "away", "train", "siteC"))
    for seed, (subject, dataset, split, site) in enumerate(scans):
        scan = native_from_template(resolution, site, seed)
        nib.save(nib.Nifti1Image(scan.image, scan.affine), str(root / f"{subject}.nii.gz"))
        labels = ""
        if dataset == "lab":
            labels = f"{subject}_pv.nii.gz"
            nib.save(nib.Nifti1Image(scan.pv.astype(np.float32), scan.affine), str(root / labels))
        lines.append(f"{subject},{dataset},{'T1' if site == 'siteA' else 'FLAIR'},{split},{subject}.nii.gz,{labels}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "prepare-data", f"workdir={tmp_path / 'w'}", "profile=tiny", "data=folder",
                           f"data.root={root}", "data.source_datasets=[lab]", "data.target_datasets=[away]",
                           "data.register=affine", f"data.template_resolution_mm={resolution}", "slices.size=[48,64]",
                           "slices.every=1")
    assert code == 0, err
    slices = tmp_path / "w" / "slices"
    assert (slices / "registration" / "away_t0.tfm").is_file()
    assert "away" in (slices / "registration.csv").read_text()
    cache = SliceCache.open(slices)
    away = cache.image_indices(datasets=["away"])
    assert len(away) and set(cache.image_table["label_index"][away]) == {-1}
    brain = load_template(resolution).brain
    for i in away:
        expected = crop_or_pad(brain[:, :, int(cache.image_table["slice_index"][i])], cache.size, fill=False)
        np.testing.assert_array_equal(cache.brain(int(i)), expected)
