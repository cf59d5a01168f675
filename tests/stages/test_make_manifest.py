"""`brainspade make-manifest`: a BIDS-style folder becomes manifest.csv, which prepare-data then reads."""

from __future__ import annotations

import csv

import nibabel as nib
from conftest import run_cli
from native_scans import freesurfer_codes, native_from_template

from brainspade.data.manifest import read_manifest
from brainspade.data.slice_cache import SliceCache


def _bids(root, n_subjects=3, flair_for=("sub-01",)):
    """sub-XX/anat/sub-XX_T1w.nii.gz (+ a FLAIR) and derivatives/freesurfer/sub-XX/mri/aparc+aseg.mgz."""
    for index in range(n_subjects):
        subject = f"sub-{index + 1:02d}"
        scan = native_from_template(4, "siteA", index)
        anat = root / subject / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(scan.image, scan.affine), str(anat / f"{subject}_T1w.nii.gz"))
        if subject in flair_for:
            nib.save(nib.Nifti1Image(scan.image, scan.affine), str(anat / f"{subject}_FLAIR.nii.gz"))
        labels = root / "derivatives" / "freesurfer" / subject / "mri"
        labels.mkdir(parents=True)
        nib.save(nib.MGHImage(freesurfer_codes(scan), scan.affine), str(labels / "aparc+aseg.mgz"))
    return root


def test_bids_folder_becomes_a_manifest_that_prepare_data_reads(capsys, tmp_path):
    root = _bids(tmp_path / "bids")
    code, out, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "dataset=lab", "test_fraction=0.34", f"workdir={tmp_path / 'w'}")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(root)
    with (root / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["subject"], r["modality"], r["split"]) for r in rows] == [
        ("sub-01", "FLAIR", "train"), ("sub-01", "T1", "train"), ("sub-02", "T1", "train"), ("sub-03", "T1", "test")]
    assert rows[0]["labels"] == rows[1]["labels"] == "derivatives/freesurfer/sub-01/mri/aparc+aseg.mgz"
    assert {r["label_format"] for r in rows} == {"freesurfer"}
    assert len(read_manifest(root)) == 4

    code, _, err = run_cli(capsys, "prepare-data", f"workdir={tmp_path / 'w'}", "profile=tiny", "data=folder",
                           f"data.root={root}", "data.source_datasets=[lab]", "data.register=affine",
                           "data.template_resolution_mm=4")
    assert code == 0, err
    cache = SliceCache.open(tmp_path / "w" / "slices")
    assert set(cache.image_table["subject"]) == {"sub-01", "sub-02", "sub-03"}
    assert (tmp_path / "w" / "slices" / "registration" / "lab_sub-02.tfm").is_file()


def test_a_subject_without_labels_is_named_in_one_line(capsys, tmp_path):
    root = _bids(tmp_path / "bids", n_subjects=2, flair_for=())
    (root / "derivatives" / "freesurfer" / "sub-02" / "mri" / "aparc+aseg.mgz").unlink()
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "labels=aparc+aseg.mgz",
                           f"workdir={tmp_path / 'w'}")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "sub-02" in err and "aparc+aseg.mgz" in err
    assert not (root / "manifest.csv").exists()


def _tiny_bids(root, visits, labels_in):
    """Small images for (subject, session) `visits` and a label file in each folder of `labels_in`."""
    import numpy as np

    for subject, session in visits:
        anat = root / subject / (session or "") / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        name = "_".join(p for p in (subject, session) if p)
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(anat / f"{name}_T1w.nii.gz"))
    for folder in labels_in:
        (root / "derivatives" / "freesurfer" / folder).mkdir(parents=True, exist_ok=True)
        (root / "derivatives" / "freesurfer" / folder / "aparc+aseg.mgz").write_bytes(b"")
    return root


def test_a_subject_label_in_any_script_is_kept(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-\u00fc04", None), ("sub-05", None)],
                      ["sub-\u00fc04/mri", "sub-05/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "test_fraction=0.5",
                           f"workdir={tmp_path / 'w'}")
    assert code == 0, err
    with (root / "manifest.csv").open(encoding="utf-8") as handle:
        assert sorted(r["subject"] for r in csv.DictReader(handle)) == ["sub-05", "sub-\u00fc04"]


def test_sessions_are_paired_with_their_own_labels(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1")],
                      ["sub-01/ses-1/mri", "sub-01/ses-2/mri", "sub-02/ses-1/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "test_fraction=0.5",
                           f"workdir={tmp_path / 'w'}")
    assert code == 0, err
    with (root / "manifest.csv").open() as handle:
        rows = {r["subject"]: r for r in csv.DictReader(handle)}
    assert rows["sub-01_ses-2"]["labels"] == "derivatives/freesurfer/sub-01/ses-2/mri/aparc+aseg.mgz"
    assert rows["sub-01_ses-1"]["labels"] == "derivatives/freesurfer/sub-01/ses-1/mri/aparc+aseg.mgz"
    assert rows["sub-01_ses-1"]["split"] == rows["sub-01_ses-2"]["split"] == "train"  # one subject, one split


def test_a_session_without_its_own_labels_is_named_not_paired_with_another(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-01", "ses-1"), ("sub-01", "ses-2")], ["sub-01/ses-1/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", f"workdir={tmp_path / 'w'}")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "sub-01 ses-2" in err and "each session needs its own label file" in err
    assert not (root / "manifest.csv").exists()
