"""Choose `segmentation.through_plane_sigma_mm` on dev subjects: Dice and streaks per smoothing of `segment`'s probabilities.

Each dev subject of the given sites (phantom, labelled, on the template grid) is registered and
segmented slice by slice as `brainspade segment` does, once; its class probabilities are then
smoothed across slices with each sigma and scored against the subject's PV argmax: class Dice and
the through-plane streak rate (labelled voxels whose label differs from both axial neighbours, which
agree with each other). The rule, fixed before running: the largest class-mean Dice; a sigma within
0.002 of it that is smaller wins (less smoothing of thin structures).

    python scripts/choose_through_plane_sigma.py --workdir W --model R_iod --sites siteB siteN --sigmas 0 2 4
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from brainspade.data.registration import load_template, register_to_template, resample_to_template
from brainspade.evaluation.metrics import dice, streak_rate
from brainspade.segmentation.native import ModelCard, template_probabilities
from brainspade.segmentation.nnunet import Segmenter

CLASSES = {"csf": 1, "gm": 2, "wm": 3}
TIE_DICE = 0.002




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default="R_iod")
    parser.add_argument("--sites", nargs="+", default=["siteB", "siteN"])
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 2.0, 4.0])
    parser.add_argument("--subjects", type=int, default=3, help="dev subjects per site")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring, as profiles other than cpu")
    args = parser.parse_args()

    folder = args.workdir / "segmentation" / "models" / args.model
    card = ModelCard.load(folder)
    template = load_template(card.template_resolution_mm)
    # As `segment profile=cpu` predicts: one pass per slice (--mirroring for the profiles that average flips).
    segmenter = Segmenter(folder / "nnunet", card.arm, torch.device("cpu"), SimpleNamespace(test_time_mirroring=args.mirroring))
    with (args.workdir / "phantom" / "manifest.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["dataset"] in args.sites and r["split"] == "dev"]
    scores = {sigma: [] for sigma in args.sigmas}
    for site in args.sites:
        for row in [r for r in rows if r["dataset"] == site][: args.subjects]:
            image = nib.load(str(args.workdir / "phantom" / row["image"]))
            pv = np.asarray(nib.load(str(args.workdir / "phantom" / row["labels"])).dataobj, dtype=np.float32)
            truth = np.argmax(pv[..., :4], axis=-1)
            data = image.get_fdata(dtype=np.float32)
            registration = register_to_template(data, image.affine, template, accept=0.1)
            moved = resample_to_template(data, image.affine, registration.transform, template)
            raw = template_probabilities(moved, template, segmenter, card)
            for sigma in args.sigmas:
                smoothed = raw if sigma == 0 else gaussian_filter1d(raw, sigma / template.resolution_mm, axis=2,
                                                                    mode="nearest")
                labels = np.argmax(smoothed, axis=-1)
                labels[~template.brain] = 0
                row_scores = {name: dice(labels, truth, label) for name, label in CLASSES.items()}
                row_scores["streaks"] = streak_rate(labels)
                scores[sigma].append(row_scores)
                print(f"{row['subject']} sigma {sigma}: " + " ".join(f"{k} {v:.4f}" for k, v in row_scores.items()),
                      flush=True)
    print("| sigma (mm) | " + " | ".join(CLASSES) + " | mean | streaks |\n|---|---|---|---|---|---|")
    means = {}
    for sigma, rows_of in scores.items():
        per_class = {name: np.mean([r[name] for r in rows_of]) for name in CLASSES}
        means[sigma] = float(np.mean(list(per_class.values())))
        print(f"| {sigma:g} | " + " | ".join(f"{v:.3f}" for v in per_class.values()) +
              f" | {means[sigma]:.4f} | {np.mean([r['streaks'] for r in rows_of]):.4f} |")
    best = max(means.values())
    chosen = min(sigma for sigma, mean in means.items() if mean >= best - TIE_DICE)
    print(f"chosen: through_plane_sigma_mm={chosen:g} (class-mean Dice {means[chosen]:.4f}; best {best:.4f})")


if __name__ == "__main__":
    main()
