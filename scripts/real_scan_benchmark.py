"""`brainspade segment` on a real scan as labs have it, scored against a classical tissue reference.

The scan is Colin 27 (one subject, T1, 1 mm, skull and scalp on) and its brain-extracted copy, from
Debian's mricron-data (`scripts/fetch_real_scans.sh` puts them in the scans folder). Four inputs are
segmented by one trained arm in one `brainspade segment` run:

  skull_on          ch2 as shipped
  brain_extracted   ch2bet (the same scan, skull and scalp removed by BET)
  posed             ch2 rotated 8 deg about the left-right axis and 10 deg about the vertical one, resampled
                    to 1.2 x 1 x 1 mm with its first voxel axis flipped (a known transform)
  posed_extracted   ch2bet posed the same way

Each result is brought back to ch2's grid (the posed ones through the known transform, nearest
neighbour) and compared with the reference: ANTs Atropos (k-means start, MRF smoothing, 3 classes)
on ch2bet inside its brain mask. The reference is made once by the `reference` step, in any Python
with antspyx and nibabel (`pip install antspyx nibabel`); ANTs is not a brainspade dependency.

Reported per input: Dice per class, volumes (mL), labelled millilitres outside the brain (ch2bet's
mask dilated by 3 mm), and the through-plane streak rate (labelled voxels whose label differs from
both axial neighbours, which agree with each other), beside the reference's own rate.

    python scripts/real_scan_benchmark.py reference [--scans DIR]
    python scripts/real_scan_benchmark.py run --workdir W --model R_iod --profile cpu --out DIR [--scans DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SCANS = Path(os.environ.get("BRAINSPADE_REAL_SCANS", Path.home() / ".cache" / "brainspade" / "real_scans"))
REFERENCE = "ch2_atropos.nii.gz"
CLASSES = {"csf": 1, "gm": 2, "wm": 3}
POSE_DEGREES = {"x": 8.0, "z": 10.0}
POSED_VOXEL_MM = (1.2, 1.0, 1.0)
OUTSIDE_MARGIN_MM = 3.0


def make_reference(scans: Path) -> Path:
    """Atropos 3-class segmentation of ch2bet inside its brain mask (1 CSF, 2 GM, 3 WM by mean intensity)."""
    import ants

    image = ants.image_read(str(scans / "ch2bet.nii.gz"))
    mask = ants.get_mask(image, low_thresh=1e-3, cleanup=0)
    result = ants.atropos(a=image, x=mask, i="kmeans[3]", m="[0.2,1x1x1]", c="[5,0]")
    path = scans / REFERENCE
    ants.image_write(result["segmentation"], str(path))
    labels = nib.load(str(path)).get_fdata().astype(np.int16)
    data = nib.load(str(scans / "ch2bet.nii.gz")).get_fdata()
    means = [float(data[labels == c].mean()) for c in (1, 2, 3)]
    print(f"[reference] {path}: class means {[round(m, 1) for m in means]} (must rise: CSF < GM < WM)")
    if not means[0] < means[1] < means[2]:
        raise SystemExit("Atropos classes are not ordered by intensity; check the reference")
    return path


def pose_matrix(centre: np.ndarray) -> np.ndarray:
    """The known rigid motion (RAS, 4x4) about `centre`."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xz", [POSE_DEGREES["x"], POSE_DEGREES["z"]], degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre
    return matrix


def posed_copy(image: nib.Nifti1Image, pose: np.ndarray) -> nib.Nifti1Image:
    """`image` moved by `pose` onto a new grid: POSED_VOXEL_MM voxels, first axis flipped, the whole head in view."""
    from scipy.ndimage import map_coordinates

    shape = np.array(image.shape)
    corners = np.array([[x, y, z, 1.0] for x in (0, shape[0] - 1) for y in (0, shape[1] - 1) for z in (0, shape[2] - 1)])
    moved = corners @ image.affine.T @ pose.T
    low, high = moved[:, :3].min(axis=0), moved[:, :3].max(axis=0)
    new_shape = tuple(int(np.ceil((high[a] - low[a]) / POSED_VOXEL_MM[a])) + 1 for a in range(3))
    affine = np.diag([-POSED_VOXEL_MM[0], POSED_VOXEL_MM[1], POSED_VOXEL_MM[2], 1.0])
    affine[:3, 3] = [high[0], low[1], low[2]]
    grid = np.indices(new_shape, dtype=np.float64).reshape(3, -1)
    to_source = np.linalg.inv(image.affine) @ np.linalg.inv(pose) @ affine
    coords = to_source[:3, :3] @ grid + to_source[:3, 3:4]
    data = map_coordinates(image.get_fdata(dtype=np.float32), coords, order=1, cval=0.0).reshape(new_shape)
    return nib.Nifti1Image(data.astype(np.float32), affine)


def back_to_original(labels: nib.Nifti1Image, original: nib.Nifti1Image, pose: np.ndarray) -> np.ndarray:
    """Labels of a posed copy on the original's grid (nearest neighbour through the known pose)."""
    from scipy.ndimage import map_coordinates

    grid = np.indices(original.shape, dtype=np.float64).reshape(3, -1)
    to_posed = np.linalg.inv(labels.affine) @ pose @ original.affine
    coords = to_posed[:3, :3] @ grid + to_posed[:3, 3:4]
    data = np.asarray(labels.dataobj, dtype=np.float32)
    return map_coordinates(data, coords, order=0, cval=0.0).reshape(original.shape).astype(np.uint8)




def score(labels: np.ndarray, reference: np.ndarray, outside: np.ndarray) -> dict:
    from brainspade.evaluation.metrics import dice, streak_rate

    row = {f"dice_{name}": round(dice(labels, reference, label), 3) for name, label in CLASSES.items()}
    row.update({f"{name}_ml": round(float((labels == label).sum()) / 1000.0, 1) for name, label in CLASSES.items()})
    row["outside_ml"] = round(float(((labels > 0) & outside).sum()) / 1000.0, 1)
    row["streaks"] = round(streak_rate(labels), 4)
    return row


def run(args: argparse.Namespace) -> None:
    from scipy.ndimage import binary_dilation, generate_binary_structure, iterate_structure

    from brainspade.segmentation.native import qc_planes, write_qc_figure

    scans, out = args.scans, args.out
    reference_path = scans / REFERENCE
    if not reference_path.is_file():
        raise SystemExit(f"{reference_path} is missing: run `python {sys.argv[0]} reference --scans {scans}` "
                         "in a Python with antspyx and nibabel first")
    skull_on = nib.load(str(scans / "ch2.nii.gz"))
    extracted = nib.load(str(scans / "ch2bet.nii.gz"))
    reference = np.asarray(nib.load(str(reference_path)).dataobj).astype(np.uint8)
    brain = extracted.get_fdata() > 0
    ball = iterate_structure(generate_binary_structure(3, 1), int(OUTSIDE_MARGIN_MM))
    outside = ~binary_dilation(brain, ball)
    centre = (extracted.affine @ np.r_[np.argwhere(brain).mean(axis=0), 1.0])[:3]
    pose = pose_matrix(centre)

    inputs = out / "scans"
    inputs.mkdir(parents=True, exist_ok=True)
    nib.save(skull_on, str(inputs / "skull_on.nii.gz"))
    nib.save(extracted, str(inputs / "brain_extracted.nii.gz"))
    nib.save(posed_copy(skull_on, pose), str(inputs / "posed.nii.gz"))
    nib.save(posed_copy(extracted, pose), str(inputs / "posed_extracted.nii.gz"))

    command = [sys.executable, "-m", "brainspade", "segment", f"model={args.model}", f"input={inputs}",
               f"output={out / 'segmented'}", f"workdir={args.workdir}", f"profile={args.profile}", *args.overrides]
    print("[real-scan] " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=False)
    seconds = time.perf_counter() - start
    print(f"[real-scan] segment exited {done.returncode} after {seconds:.0f} s", flush=True)

    rows, views = [], [("reference (Atropos on ch2bet)", qc_planes(skull_on.get_fdata(), reference, skull_on.affine))]
    for name in ("skull_on", "brain_extracted", "posed", "posed_extracted"):
        path = out / "segmented" / f"{name}_seg.nii.gz"
        if not path.is_file():
            rows.append({"input": name, "result": "no labels (see segment's output)"})
            continue
        labels = nib.load(str(path))
        on_original = (back_to_original(labels, skull_on, pose) if name.startswith("posed")
                       else np.asarray(labels.dataobj).astype(np.uint8))
        rows.append({"input": name, **score(on_original, reference, outside)})
        views.append((name, qc_planes(skull_on.get_fdata(), on_original, skull_on.affine)))
    rows.append({"input": "reference", **score(reference, reference, outside)})
    write_qc_figure(out / "real_scan_qc.png", views, 10)
    (out / "real_scan.json").write_text(json.dumps({"model": args.model, "seconds": round(seconds, 1), "rows": rows},
                                                   indent=1))
    columns = ["input", *[f"dice_{c}" for c in CLASSES], *[f"{c}_ml" for c in CLASSES], "outside_ml", "streaks"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    print(f"[real-scan] figure {out / 'real_scan_qc.png'}, table {out / 'real_scan.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    reference = steps.add_parser("reference", help="make the Atropos reference (needs antspyx)")
    reference.add_argument("--scans", type=Path, default=SCANS)
    bench = steps.add_parser("run", help="segment the four inputs and score them")
    bench.add_argument("--scans", type=Path, default=SCANS)
    bench.add_argument("--workdir", type=Path, required=True)
    bench.add_argument("--model", default="R_iod")
    bench.add_argument("--profile", default="cpu")
    bench.add_argument("--out", type=Path, required=True)
    bench.add_argument("overrides", nargs="*", help="more key=value settings for segment")
    args = parser.parse_args()
    if args.step == "reference":
        make_reference(args.scans)
    else:
        run(args)


if __name__ == "__main__":
    main()
