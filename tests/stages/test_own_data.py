"""A lab's own scans: FreeSurfer / SynthSeg / FAST labels and registration to MNI space in prepare-data.

Native scans are phantom subjects (the template anatomy) moved by a known random pose onto a
reoriented grid with other voxels and a wider field of view; their labels are written as a
FreeSurfer aparc+aseg (.mgz), SynthSeg posteriors and FAST pve files. `prepare-data
data.register=affine` must give back the MNI-space PV maps and the pose.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli
from native_scans import (
    freesurfer_codes,
    make_native,
    native_from_template,
    random_pose,
    soft_dice,
    template_subject,
    transform_error_mm,
    with_head,
    write_native_labels,
)
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from brainspade.data import registration
from brainspade.data.freesurfer import group_label_map
from brainspade.data.label_sources import LabelReading, load_labels
from brainspade.data.manifest import read_manifest
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import crop_or_pad
from brainspade.errors import BrainspadeError

CHANNELS = ["background", "csf", "gm", "wm"]
MIN_SIMILARITY = OmegaConf.load(Path(__file__).parents[2] / "configs" / "data" / "folder.yaml").min_similarity
FORMATS = ("freesurfer", "synthseg_posteriors", "fast")
SITES = {"freesurfer": "siteA", "synthseg_posteriors": "siteC", "fast": "siteB"}  # T1, FLAIR, other-scanner T1
# FreeSurfer's aseg is always on its 1 mm conformed grid: half the 2 mm template voxel; the others anisotropic.
VOXEL_FACTORS = {"freesurfer": (0.5, 0.5, 0.5), "synthseg_posteriors": (0.6, 0.75, 0.9), "fast": (0.6, 0.75, 0.9)}


def _write_manifest(root: Path, rows: list[list[str]]) -> None:
    """manifest.csv of `rows`, plus a held-out copy of the first subject: every data set needs a test split."""
    first = rows[0]
    heldout = root / "heldout"
    for folder in {Path(first[4]).parent, Path(first[5]).parent}:
        (heldout / folder).mkdir(parents=True, exist_ok=True)
        for file in (root / folder).iterdir():
            if file.is_file() and file.name != "manifest.csv":
                shutil.copy2(file, heldout / folder / file.name)
    test_row = [f"{first[0]}-heldout", first[1], first[2], "test", f"heldout/{first[4]}", f"heldout/{first[5]}",
                *first[6:]]
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "dataset", "modality", "split", "image", "labels", "label_format"])
        writer.writerows([*rows, test_row])


def _overrides(root: Path, workdir: Path, resolution: int, size: str) -> list[str]:
    return [f"workdir={workdir}", "profile=tiny", "data=folder", f"data.root={root}", "data.source_datasets=[lab]",
            f"data.channels=[{','.join(CHANNELS)}]", "data.register=affine",
            f"data.template_resolution_mm={resolution}", f"slices.size={size}", "slices.every=1"]


@pytest.mark.slow
def test_prepare_data_registers_each_label_format_back_to_mni(capsys, tmp_path):
    """At 2 mm (the cpu profile): PV Dice >= 0.90 GM/WM, >= 0.80 CSF, and the pose within a fraction of a voxel."""
    resolution = 2
    root = tmp_path / "lab"
    scans, rows = {}, []
    for seed, label_format in enumerate(FORMATS):
        subject = f"sub-{seed:02d}"
        scans[subject] = native_from_template(resolution, SITES[label_format], seed, VOXEL_FACTORS[label_format])
        labels = write_native_labels(scans[subject], root / subject, subject)
        rows.append([subject, "lab", "T1", "train", f"{subject}/{subject}_T1w.nii.gz",
                     f"{subject}/{labels[label_format]}", label_format])
    _write_manifest(root, rows)
    started = time.time()
    code, out, err = run_cli(capsys, "prepare-data", *_overrides(root, tmp_path / "w", resolution, "[96,128]"))
    seconds = time.time() - started
    assert code == 0, err

    slices = tmp_path / "w" / "slices"
    cache = SliceCache.open(slices)
    _, truth, affine = template_subject(resolution, "siteA", 0)
    template = registration.load_template(resolution)
    with (slices / "registration.csv").open() as handle:
        similarity = {r["subject"]: float(r["tissue_similarity"]) for r in csv.DictReader(handle)}
    report, measured = [], []
    for (subject, scan), label_format in zip(scans.items(), FORMATS, strict=True):
        found = registration.transform_matrix(registration.load_transform(slices / "registration" / f"lab_{subject}.tfm"))
        error = transform_error_mm(found, scan.template_to_native, np.argwhere(template.brain), affine)
        rows_of_subject = np.flatnonzero(cache.label_table["subject"] == subject)
        recovered = np.stack([cache.pv_map(i) for i in rows_of_subject]).astype(np.float32)  # (S, C, H, W)
        original = np.stack([np.moveaxis(crop_or_pad(truth[:, :, z], [96, 128]), -1, 0)
                             for z in cache.label_table["slice_index"][rows_of_subject]])
        if label_format == "freesurfer":  # hard labels: compared as hard labels (argmax of both)
            recovered, original = (np.eye(len(CHANNELS))[np.argmax(m, axis=1)].transpose(0, 3, 1, 2)
                                   for m in (recovered, original))
        dice = {name: soft_dice(recovered[:, c], original[:, c]) for c, name in enumerate(CHANNELS) if c}
        report.append(f"{label_format}: pose error mean {error.mean():.2f} mm max {error.max():.2f} mm, similarity "
                      f"{similarity[subject]:.2f}, PV Dice " + " ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        measured.append((error, dice))
    print(f"\n[{seconds:.0f} s for 3 registrations at {resolution} mm]\n" + "\n".join(report))
    for line, (error, dice) in zip(report, measured, strict=True):
        assert error.mean() < 0.5 * resolution and error.max() < resolution, line
        assert dice["gm"] >= 0.90 and dice["wm"] >= 0.90 and dice["csf"] >= 0.80, line


def test_registration_recovers_a_known_pose_in_seconds():
    """At 4 mm (the tiny profile) a T1, a FLAIR and a T1 with skull and scalp: pose within 0.3 voxel on average."""
    template = registration.load_template(4)
    for seed, site, head in ((0, "siteA", False), (1, "siteC", False), (2, "siteA", True)):
        scan = native_from_template(4, site, seed, head=head)
        started = time.time()
        found = registration.register_to_template(scan.image, scan.affine, template, accept=MIN_SIMILARITY)
        seconds = time.time() - started
        error = transform_error_mm(registration.transform_matrix(found.transform), scan.template_to_native,
                                   np.argwhere(template.brain), template.grid.affine)
        assert error.mean() < 1.2 and error.max() < 3.0, (site, head, error.mean(), error.max())
        assert found.similarity > 0.3
        assert seconds < 30


def test_a_head_tilted_by_45_degrees_is_found_from_a_rotated_start():
    """A skull-on T1 tilted 45 degrees: from the centre of mass alone the fit lands 7 mm off with a 12% scale
    (and passes the check); a rotated start finds the pose."""
    template = registration.load_template(4)
    image, pv, affine = with_head(*template_subject(4, "siteA", 0), 4)
    centre = (affine @ np.r_[(np.array(pv.shape[:3]) - 1) / 2, 1])[:3]
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("x", 45, degrees=True).as_matrix()
    pose[:3, 3] = centre - pose[:3, :3] @ centre
    scan = make_native(image, pv, affine, pose, (2.4, 3.0, 3.6))
    found = registration.register_to_template(scan.image, scan.affine, template, accept=MIN_SIMILARITY)
    error = transform_error_mm(registration.transform_matrix(found.transform), scan.template_to_native,
                               np.argwhere(template.brain), template.grid.affine)
    assert found.start != "moments" and error.mean() < 1.2, (found.start, error.mean())
    assert registration.pose_of(found.transform)["rotation_x_deg"] == pytest.approx(45, abs=1.0)


def test_the_registration_check_passes_any_brain_contrast_and_refuses_what_is_not_a_brain():
    """T2-like (CSF bright, WM dark) and FLAIR brains, on the template grid and moved onto another, pass the
    default data.min_similarity; uniform noise and a smooth random volume are refused (4 mm)."""
    template = registration.load_template(4)
    image, pv, affine = template_subject(4, "siteA", 0)
    rng = np.random.default_rng(3)
    t2 = pv[..., 1] * 1.0 + pv[..., 2] * 0.55 + pv[..., 3] * 0.35
    t2 = (t2 + rng.normal(0, 0.03, t2.shape) * (pv[..., 0] < 0.5)).astype(np.float32)
    centre = (affine @ np.r_[(np.array(pv.shape[:3]) - 1) / 2, 1])[:3]
    flair = native_from_template(4, "siteC", 4)
    brains = {"T2-like on the template grid": (t2, affine),
              "T2-like moved": (lambda s: (s.image, s.affine))(make_native(t2, pv, affine, random_pose(rng, centre),
                                                                           (3.0, 3.4, 4.2))),
              "FLAIR moved": (flair.image, flair.affine)}
    for name, (volume, volume_affine) in brains.items():
        found = registration.register_to_template(volume, volume_affine, template, accept=MIN_SIMILARITY)
        assert found.similarity >= 2 * MIN_SIMILARITY, (name, found.similarity)  # measured: 0.38-0.82
    noise = rng.random((40, 40, 40)).astype(np.float32)
    blob = gaussian_filter(rng.random((60, 70, 60)), 5).astype(np.float32)
    for name, volume in (("noise", noise), ("smooth random volume", blob)):
        found = registration.register_to_template(volume, np.diag([3.0, 3.0, 3.0, 1.0]), template,
                                                  accept=MIN_SIMILARITY)
        assert found.similarity < MIN_SIMILARITY, (name, found.similarity)  # measured: noise 0.03, smooth 0.06


def _scan_with_labels(root: Path, image: np.ndarray, affine: np.ndarray, pv: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "scan.nii.gz"))
    nib.save(nib.Nifti1Image(pv.astype(np.float32), affine), str(root / "pv.nii.gz"))
    _write_manifest(root, [["s1", "lab", "T1", "train", "scan.nii.gz", "pv.nii.gz", "pv"]])


@pytest.mark.parametrize("case", ["noise", "upside_down"])
def test_a_failed_registration_is_refused_in_one_line(capsys, tmp_path, case):
    """A non-brain image, or a brain whose header puts it upside down, is refused; an earlier cache stays."""
    image, pv, affine = template_subject(4, "siteA", 0)
    good = tmp_path / "good"
    _scan_with_labels(good, image, affine, pv)
    workdir = tmp_path / "w"
    code, _, err = run_cli(capsys, "prepare-data", *_overrides(good, workdir, 4, "[48,64]"))
    assert code == 0, err
    before = (workdir / "slices" / "images.npy").read_bytes()

    if case == "noise":
        image = np.random.default_rng(0).random(image.shape).astype(np.float32)
    else:
        affine = np.diag([1.0, 1.0, -1.0, 1.0]) @ affine  # the header flips head and feet
    bad = tmp_path / "bad"
    _scan_with_labels(bad, image, affine, pv)
    code, _, err = run_cli(capsys, "prepare-data", *_overrides(bad, workdir, 4, "[48,64]"), "force=true")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "scan.nii.gz" in lines[0] and "registration to the MNI template failed" in lines[0]
    assert (workdir / "slices" / "images.npy").read_bytes() == before


def test_freesurfer_codes_group_by_tissue_with_fallbacks():
    """Deep GM is its own channel when the schema has one, else GM; aparc parcels are cortex; ventricles are CSF."""
    codes = np.array([0, 4, 43, 24, 3, 1028, 2035, 2, 41, 10, 50, 16, 8, 7]).reshape(1, 1, -1)
    small = np.argmax(group_label_map(codes, CHANNELS, None, "aseg"), axis=-1).ravel()
    assert small.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 2, 2, 3, 2, 3]
    full = ["background", "csf", "gm", "wm", "dgm", "brainstem", "cerebellum"]
    large = np.argmax(group_label_map(codes, full, None, "aseg"), axis=-1).ravel()
    assert large.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 6]


def test_unknown_codes_are_named_in_one_line_with_the_file(tmp_path):
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, :2] = [999, 30]
    path = tmp_path / "aseg.mgz"
    nib.save(nib.MGHImage(labels, np.eye(4)), str(path))
    with pytest.raises(BrainspadeError) as error:
        load_labels(path, "freesurfer", LabelReading(tuple(CHANNELS)))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "[30, 999]" in message and "data.extra_codes" in message
    pv, _ = load_labels(path, "freesurfer", LabelReading(tuple(CHANNELS), extra_codes={30: "csf", 999: "wm"}))  # per code
    assert pv[0, 0, 0].tolist() == [0, 0, 0, 1] and pv[0, 0, 1].tolist() == [0, 1, 0, 0]


def test_fast_pve_files_become_pv_maps_with_the_rest_as_background(tmp_path):
    rng = np.random.default_rng(0)
    fractions = rng.dirichlet(np.ones(4), size=(5, 5, 5)).astype(np.float32)  # background, csf, gm, wm
    for index in range(3):
        nib.save(nib.Nifti1Image(fractions[..., index + 1], np.eye(4)), str(tmp_path / f"t1_pve_{index}.nii.gz"))
    pv, _ = load_labels(tmp_path / "t1_pve_1.nii.gz", "fast", LabelReading(tuple(CHANNELS)))
    np.testing.assert_allclose(pv, fractions, atol=1e-5)


def test_a_bad_label_format_column_names_the_manifest_line(tmp_path):
    _write_manifest(tmp_path, [["s1", "lab", "T1", "train", "scan.nii.gz", "aseg.mgz", "aseg"]])
    with pytest.raises(BrainspadeError, match=r"manifest.csv:2: label_format 'aseg' must be one of pv, freesurfer"):
        read_manifest(tmp_path)


def test_labels_on_their_own_grid_follow_the_image(capsys, tmp_path):
    """FreeSurfer writes aseg.mgz on its conformed LIA grid, not the T1's: registration goes through physical space."""
    image, pv, affine = template_subject(4, "siteA", 0)
    pose = random_pose(np.random.default_rng(3), (affine @ np.r_[(np.array(pv.shape[:3]) - 1) / 2, 1])[:3])
    scan = make_native(image, pv, affine, pose, (2.4, 3.0, 3.6))
    conformed = make_native(image, pv, affine, pose, (2.0, 2.0, 2.0), axes=(0, 2, 1), flips=(True, True, False))
    root = tmp_path / "lab"
    root.mkdir()
    nib.save(nib.Nifti1Image(scan.image, scan.affine), str(root / "t1.nii.gz"))
    codes = freesurfer_codes(conformed)
    codes[np.nonzero(codes == 24)[0][0], np.nonzero(codes == 24)[1][0], np.nonzero(codes == 24)[2][0]] = 30  # a vessel
    nib.save(nib.MGHImage(codes, conformed.affine), str(root / "aseg.mgz"))
    _write_manifest(root, [["s1", "lab", "T1", "train", "t1.nii.gz", "aseg.mgz", "freesurfer"]])
    code, _, err = run_cli(capsys, "prepare-data", *_overrides(root, tmp_path / "w", 4, "[48,64]"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "aseg.mgz: unknown label code(s) [30]" in err, err
    code, _, err = run_cli(capsys, "prepare-data", *_overrides(root, tmp_path / "w", 4, "[48,64]"),
                           "data.extra_codes={csf: [30]}")
    assert code == 0, err
    cache = SliceCache.open(tmp_path / "w" / "slices")
    recovered = np.argmax(np.stack([cache.pv_map(i) for i in range(len(cache.pv_maps))]), axis=1)
    original = np.stack([np.argmax(crop_or_pad(pv[:, :, z], [48, 64]), axis=-1) for z in cache.label_table["slice_index"]])
    for label in (2, 3):  # GM, WM at 4 mm (CSF is one voxel thin here)
        overlap = 2 * np.sum((recovered == label) & (original == label))
        assert overlap / (np.sum(recovered == label) + np.sum(original == label)) > 0.8


class _OracleSegmenter:
    """Stands in for an arm's nnU-Net: answers each template slice with the template's own tissue labels."""

    def __init__(self, truth, slice_size, min_brain_fraction):
        from brainspade.data.slicing import brain_slice_indices

        self.planes = [np.moveaxis(crop_or_pad(truth[:, :, z], slice_size), -1, 0)
                       for z in brain_slice_indices(truth[..., 0] < 0.5, min_brain_fraction, every=1)]

    def slice_probabilities(self, images):
        assert len(images) == len(self.planes)  # every brain slice of the scan, in one call
        return np.stack([np.eye(4, dtype=np.float32)[np.argmax(plane, axis=0)] for plane in self.planes])


def test_segment_maps_template_labels_back_onto_each_scan_grid(tmp_path):
    """With a perfect 2D segmenter, `segment` gives each native scan its own labels back (geometry alone, 4 mm)."""
    from brainspade.data.registration import load_template
    from brainspade.segmentation.native import ModelCard, segment_files

    template = load_template(4)
    truth = np.moveaxis(np.stack([template.tissue == c for c in range(4)]).astype(np.float32), 0, -1)
    card = ModelCard("oracle", CHANNELS, 4, [48, 64], 0.05)
    scan = native_from_template(4, "siteC", 5)
    path = tmp_path / "scans" / "flair.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(scan.image, scan.affine), str(path))
    oracle = _OracleSegmenter(truth, card.slice_size, card.min_brain_fraction)
    rows = segment_files([path], tmp_path / "out", oracle, card, min_similarity=MIN_SIMILARITY).rows

    written = nib.load(str(tmp_path / "out" / "flair_seg.nii.gz"))
    assert written.shape == scan.image.shape and np.allclose(written.affine, scan.affine)
    labels, native_truth = np.asarray(written.dataobj), np.argmax(scan.pv, axis=-1)
    for label in (2, 3):  # GM, WM (measured 0.93, 0.92): template classes against the native scan's PV argmax
        overlap = 2 * np.sum((labels == label) & (native_truth == label))
        assert overlap / (np.sum(labels == label) + np.sum(native_truth == label)) > 0.88
    voxel_ml = abs(np.linalg.det(scan.affine[:3, :3])) / 1000
    assert rows[0]["gm_ml"] == pytest.approx(np.sum(labels == 2) * voxel_ml, abs=1e-3)
    assert (tmp_path / "out" / "volumes.csv").is_file() and (tmp_path / "out" / "qc.png").is_file()
