"""Print the image-generator benchmark table (markdown) from the metrics.json of finished workdirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(workdirs: list[str]) -> None:
    print("| run | steps | SSIM | PSNR (dB) | brain MAE | siteA→T1 | siteC→FLAIR | siteB→T1 | siteT FLAIR→FLAIR | siteA data set |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workdir in workdirs:
        folder = Path(workdir) / "image_generator"
        if not (folder / "manifest.json").is_file():
            print(f"| {Path(workdir).name} | unfinished | | | | | | | | |")
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        steps = json.loads((folder / "manifest.json").read_text()).get("steps", "")
        paired, transfer = metrics["paired"], metrics.get("style_transfer", {})

        print(f"| {Path(workdir).name} | {steps} | {paired['ssim']:.3f} | {paired['psnr']:.2f} | {paired['mae_brain']:.3f} "
              f"| {_share(transfer, 'siteA/T1')} | {_share(transfer, 'siteC/FLAIR')} | {_share(transfer, 'siteB/T1')} "
              f"| {_share(transfer, 'siteT/FLAIR')} "
              f"| {_share(transfer, 'siteA/T1', 'dataset_match')} |")


def _share(transfer: dict, key: str, field: str = "modality_match") -> str:
    return f"{transfer[key][field]:.2f}" if key in transfer and field in transfer[key] else "-"


if __name__ == "__main__":
    main(sys.argv[1:])
