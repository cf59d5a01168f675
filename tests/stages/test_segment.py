"""`brainspade segment`: a trained arm on a "native" scan gives labels on the scan's own grid.

The arm (R_iod, real siteA T1 slices of the shared tiny slice cache) is trained once for the
module. Its Dice on a phantom test subject in MNI space (as run-experiment scores it) is the
reference: the same subject moved to a native pose and grid, segmented by `brainspade segment`,
must score within 0.05 of it against its native ground truth.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_cli, settings_of, workdir_with_slices
from native_scans import make_native, random_pose
from scipy.ndimage import binary_dilation
from scipy.spatial.transform import Rotation

from brainspade.data.slice_cache import SliceCache
from brainspade.evaluation.metrics import dice
from brainspade.segmentation.arms import ArmSpec, RealSource, ensure_arm
from brainspade.segmentation.evaluation import load_test_set, predict_test_set
from brainspade.segmentation.nnunet import Segmenter

pytestmark = pytest.mark.slow  # trains a small nnU-Net (about two minutes)

SUBJECT = "siteA_test_000"
CLASSES = {"csf": 1, "gm": 2, "wm": 3}
TRAINING = settings_of("segmentation", epochs=8, iterations_per_epoch=25, val_iterations_per_epoch=2,
                       test_time_mirroring=False, processes=1)


@pytest.fixture(scope="module")
def trained(tiny_slices, tmp_path_factory):
    """A workdir with an R_iod arm trained at tiny size, and that arm's MNI-space Dice on SUBJECT."""
    workdir = workdir_with_slices(tiny_slices, tmp_path_factory.mktemp("segment"))
    cache = SliceCache.open(workdir / "slices")
    folder = workdir / "segmentation" / "models" / "R_iod"
    ensure_arm(ArmSpec("R_iod", real=RealSource("siteA", "T1")), folder, cache, TRAINING, lambda source: None,
               seed=0, force=False, device=torch.device("cpu"))
    volume = next(v for v in load_test_set(cache, "siteA", "T1") if v.subject == SUBJECT)
    segmenter = Segmenter(folder / "nnunet", "R_iod", torch.device("cpu"), TRAINING)
    prediction = predict_test_set(segmenter, [volume], "mni")[SUBJECT]
    mni_dice = {name: dice(prediction, volume.truth, label) for name, label in CLASSES.items()}
    return workdir, mni_dice


def _native_scan(workdir, folder):
    """SUBJECT moved by a known pose onto a reoriented 3-4 mm grid; returns (scan path, native truth)."""
    phantom = workdir / "phantom" / "siteA"
    image = nib.load(str(phantom / f"{SUBJECT}_T1.nii.gz"))
    pv = nib.load(str(phantom / f"{SUBJECT}_labels.nii.gz")).get_fdata(dtype=np.float32)[..., :4]
    centre = (image.affine @ np.r_[(np.array(image.shape) - 1) / 2, 1])[:3]
    scan = make_native(image.get_fdata(dtype=np.float32), pv / pv.sum(-1, keepdims=True), image.affine,
                       random_pose(np.random.default_rng(7), centre), (3.0, 3.4, 4.2))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lab_scan.nii.gz"
    nib.save(nib.Nifti1Image(scan.image, scan.affine), str(path))
    return path, np.argmax(scan.pv, axis=-1)


def test_segment_gives_native_labels_as_good_as_in_mni_space(capsys, trained, tmp_path):
    workdir, mni_dice = trained
    path, truth = _native_scan(workdir, tmp_path / "scans")
    started = time.time()
    code, out, err = run_cli(capsys, "segment", f"workdir={workdir}", "profile=tiny", "model=R_iod",
                             f"input={path.parent}", f"output={tmp_path / 'out'}")
    seconds = time.time() - started
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(tmp_path / "out")

    written = nib.load(str(tmp_path / "out" / "lab_scan_seg.nii.gz"))
    scan = nib.load(str(path))
    assert written.shape == scan.shape
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    native_dice = {name: dice(labels, truth, label) for name, label in CLASSES.items()}
    with capsys.disabled():
        print(f"\n[segment {seconds:.0f} s] MNI Dice {mni_dice}\nnative Dice {native_dice}")
    for name in CLASSES:
        assert abs(native_dice[name] - mni_dice[name]) <= 0.05, (name, mni_dice, native_dice)

    # volumes.csv agrees with the label volume it describes.
    with (tmp_path / "out" / "volumes.csv").open() as handle:
        row = next(csv.DictReader(handle))
    voxel_ml = abs(np.linalg.det(scan.affine[:3, :3])) / 1000
    for name, label in CLASSES.items():
        assert float(row[f"{name}_ml"]) == pytest.approx((labels == label).sum() * voxel_ml, abs=1e-3)
    assert (tmp_path / "out" / "qc.png").stat().st_size > 0

    # The model folder carries what it needs: the arm folder copied elsewhere, or the model alone
    # (export=), gives the same labels without the workdir.
    copy = tmp_path / "copied_arm"
    shutil.copytree(workdir / "segmentation" / "models" / "R_iod", copy, symlinks=True)
    exported = tmp_path / "exported_model"
    code, _, err = run_cli(capsys, "segment", f"workdir={tmp_path / 'elsewhere'}", "profile=tiny", f"model={copy}",
                           f"input={path}", f"output={tmp_path / 'out2'}", f"export={exported}")
    assert code == 0, err
    assert sorted(p.name for p in exported.rglob("*") if p.is_file()) == [
        "checkpoint_final.pth", "dataset.json", "model.json", "plans.json"]
    code, _, err = run_cli(capsys, "segment", f"workdir={tmp_path / 'elsewhere'}", "profile=tiny",
                           f"model={exported}", f"input={path}", f"output={tmp_path / 'out3'}")
    assert code == 0, err
    assert np.mean(np.asarray(nib.load(str(tmp_path / "out3" / "lab_scan_seg.nii.gz")).dataobj) == labels) > 0.999
    shipped = np.asarray(nib.load(str(tmp_path / "out2" / "lab_scan_seg.nii.gz")).dataobj)
    # ITK's multithreaded filters differ in the last float digits between runs (seeded sampling, ~1e-8).
    assert np.mean(shipped == labels) > 0.999


def test_segment_refuses_a_non_brain_scan_in_one_line(capsys, trained, tmp_path):
    workdir, _ = trained
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    code, _, err = run_cli(capsys, "segment", f"workdir={workdir}", "profile=tiny", "model=R_iod", f"input={path}",
                           f"output={tmp_path / 'out'}")
    assert code == 1
    errors = [line for line in err.strip().splitlines() if not line.startswith("[segment]")]  # not the progress
    assert len(errors) == 1 and "noise.nii.gz" in errors[0]
    assert not (tmp_path / "out" / "noise_seg.nii.gz").exists() and (tmp_path / "out" / "failed.csv").is_file()


REAL_SCANS = Path(os.environ.get("BRAINSPADE_REAL_SCANS", Path.home() / ".cache" / "brainspade" / "real_scans"))


def _real_scan_at_2mm():
    """Colin 27 with skull and scalp (ch2) and its BET brain mask (ch2bet > 0), block-averaged from 1 mm to 2 mm."""
    if not (REAL_SCANS / "ch2.nii.gz").is_file():
        pytest.skip(f"no real scans in {REAL_SCANS}: run scripts/fetch_real_scans.sh (test.sh does)")
    head, extracted = (nib.load(str(REAL_SCANS / f"{name}.nii.gz")) for name in ("ch2", "ch2bet"))
    crop = tuple(slice(0, n - n % 2) for n in head.shape)

    def halve(data):
        data = data[crop]
        return data.reshape(data.shape[0] // 2, 2, data.shape[1] // 2, 2, data.shape[2] // 2, 2).mean(axis=(1, 3, 5))

    affine = head.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] += head.affine[:3, :3] @ np.full(3, 0.5)  # the centre of each 2 x 2 x 2 block
    return (halve(head.get_fdata(dtype=np.float32)).astype(np.float32),
            halve((extracted.get_fdata() > 0).astype(np.float32)) > 0.5, affine)


def test_a_real_skull_on_scan_is_labelled_inside_its_brain_and_alike_in_any_pose(capsys, trained, tmp_path):
    """A real T1 with skull and scalp (Colin 27, 2 mm) is segmented, not refused: no label beyond 4 mm of its
    BET brain mask; a copy turned 8 and 10 degrees about two axes, on 2.4 x 2 x 2 mm voxels with the first axis
    flipped, gets the same labels back (compared on the copy's grid)."""
    workdir, _ = trained
    image, brain, affine = _real_scan_at_2mm()
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(scans / "colin.nii.gz"))
    code, _, err = run_cli(capsys, "segment", f"workdir={workdir}", "profile=tiny", "model=R_iod",
                           f"input={scans / 'colin.nii.gz'}", f"output={tmp_path / 'out'}")
    assert code == 0, err
    labels = np.asarray(nib.load(str(tmp_path / "out" / "colin_seg.nii.gz")).dataobj)
    near_brain = binary_dilation(brain, iterations=2)
    outside_ml = float(((labels > 0) & ~near_brain).sum()) * 8 / 1000
    assert outside_ml < 5.0, outside_ml  # measured 1.1 mL; without the brain mask 1,061 mL (scalp and neck)
    assert (labels[brain] > 0).mean() > 0.95  # and the brain itself is labelled

    # The posed copy: make_native moves the image and, as PV maps, the original's labels.
    one_hot = np.moveaxis(np.stack([labels == c for c in range(4)]).astype(np.float32), 0, -1)
    centre = (affine @ np.r_[np.argwhere(brain).mean(axis=0), 1.0])[:3]
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xz", [8, 10], degrees=True).as_matrix()
    pose[:3, 3] = centre - pose[:3, :3] @ centre
    posed = make_native(image, one_hot, affine, pose, (2.4, 2.0, 2.0), axes=(0, 1, 2), flips=(True, False, False))
    nib.save(nib.Nifti1Image(posed.image, posed.affine), str(scans / "colin_posed.nii.gz"))
    code, _, err = run_cli(capsys, "segment", f"workdir={workdir}", "profile=tiny", "model=R_iod",
                           f"input={scans / 'colin_posed.nii.gz'}", f"output={tmp_path / 'out'}")
    assert code == 0, err
    posed_labels = np.asarray(nib.load(str(tmp_path / "out" / "colin_posed_seg.nii.gz")).dataobj)
    expected = np.argmax(posed.pv, axis=-1)
    scores = {name: dice(posed_labels, expected, label) for name, label in CLASSES.items()}
    with capsys.disabled():
        print(f"\n[real scan] outside the brain {outside_ml:.1f} mL; posed vs original Dice {scores}")
    assert min(scores["gm"], scores["wm"]) > 0.85, scores
    with (tmp_path / "out" / "registration.csv").open() as handle:
        poses = {row["scan"]: row for row in csv.DictReader(handle)}
    assert sorted(poses) == ["colin", "colin_posed"]
    turned = float(poses["colin_posed"]["rotation_x_deg"]) - float(poses["colin"]["rotation_x_deg"])
    assert abs(abs(turned) - 8) < 2, poses
