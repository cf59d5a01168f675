"""Tissue similarity after registration for brains of several contrasts and for images that are not brains.

The table behind `data.min_similarity`: each input is registered to the template at `--resolution`
mm as `segment` and `prepare-data data.register=affine` do, and its tissue similarity printed.
Brains: phantom dev subjects (siteB and siteN T1, siteC FLAIR) and a train subject of siteA, a
T2-like volume made from siteB's PV maps (CSF bright, WM dark), the T2-like and FLAIR volumes moved
onto another grid by a random pose, and, with `--real`, Colin 27 (a real skull-on T1; see
scripts/fetch_real_scans.sh) and its intensities inverted. Failures: headers flipped head to feet,
x and y swapped, uniform noise and a smooth random volume.

    python scripts/registration_similarity.py --phantom W/phantom [--resolution 2] [--real]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from native_scans import make_native, random_pose  # noqa: E402  (the tests' pose and grid helpers)

from brainspade.data.registration import load_template, register_to_template  # noqa: E402

REAL_SCANS = Path(os.environ.get("BRAINSPADE_REAL_SCANS", Path.home() / ".cache" / "brainspade" / "real_scans"))


def inputs(phantom: Path, real: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = nib.load(str(path))
        return image.get_fdata(dtype=np.float32), image.affine

    cases = {"siteA T1 (train)": load(phantom / "siteA" / "siteA_train_000_T1.nii.gz"),
             "siteB T1": load(phantom / "siteB" / "siteB_dev_000_T1.nii.gz"),
             "siteN T1": load(phantom / "siteN" / "siteN_dev_000_T1.nii.gz"),
             "siteC FLAIR": load(phantom / "siteC" / "siteC_dev_000_FLAIR.nii.gz")}
    pv, affine = load(phantom / "siteB" / "siteB_dev_000_labels.nii.gz")
    pv = pv[..., :4] / pv[..., :4].sum(axis=-1, keepdims=True)
    t2 = gaussian_filter(pv[..., 1] * 1.0 + pv[..., 2] * 0.55 + pv[..., 3] * 0.35, 0.5)
    t2 = (t2 + rng.normal(0, 0.03, t2.shape) * (pv[..., 0] < 0.5)).astype(np.float32)
    cases["T2-like, template grid"] = (t2, affine)
    centre = (affine @ np.r_[(np.array(t2.shape) - 1) / 2, 1])[:3]
    for name, volume, seed in (("T2-like, moved", t2, 7), ("siteC FLAIR, moved", cases["siteC FLAIR"][0], 8)):
        moved = make_native(volume, pv, affine, random_pose(np.random.default_rng(seed), centre), (1.8, 2.2, 2.5))
        cases[name] = (moved.image, moved.affine)
    if real:
        head = nib.load(str(REAL_SCANS / "ch2.nii.gz"))
        data = head.get_fdata(dtype=np.float32)
        cases["Colin 27 T1, skull on"] = (data, head.affine)
        inside = gaussian_filter(data, 2) > 10
        cases["Colin 27 inverted"] = (np.where(inside, data.max() - data, 0).astype(np.float32), head.affine)
        cases["Colin 27, header flipped head to feet"] = (data[:, :, ::-1].copy(), head.affine)
    site_a = cases["siteA T1 (train)"]
    cases["siteA, header flipped head to feet"] = (site_a[0][:, :, ::-1].copy(), site_a[1])
    cases["siteA, x and y swapped"] = (np.swapaxes(site_a[0], 0, 1).copy(), site_a[1])
    cases["uniform noise"] = (rng.random((40, 40, 40)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    cases["smooth random volume"] = (gaussian_filter(rng.random((80, 90, 80)), 6).astype(np.float32),
                                     np.diag([2.0, 2.0, 2.0, 1.0]))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom", type=Path, required=True, help="a workdir's phantom folder")
    parser.add_argument("--resolution", type=int, default=2)
    parser.add_argument("--minimum", type=float, default=0.1, help="data.min_similarity (the search stops above it)")
    parser.add_argument("--real", action="store_true", help="add Colin 27 (scripts/fetch_real_scans.sh)")
    args = parser.parse_args()
    template = load_template(args.resolution)
    print("| input | tissue similarity | start | seconds |\n|---|---|---|---|")
    for name, (volume, affine) in inputs(args.phantom, args.real).items():
        started = time.perf_counter()
        found = register_to_template(volume, affine, template, accept=args.minimum)
        print(f"| {name} | {found.similarity:.3f} | {found.start} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
