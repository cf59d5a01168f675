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
