"""Print the style-match benchmark table (markdown) from W/evaluation/style_match/metrics.json of finished workdirs.

Per workdir and style source: the share of styled images the evaluation-only site classifier assigns to
the style's site, and the GM/WM and CSF/GM ratios of generated vs real images of that site
(`brainspade evaluate-generators` writes the metrics; benchmarks/image_generator.md shows the table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOURCES = ("siteA/T1", "siteB/T1", "siteC/FLAIR", "siteT/T1", "siteT/FLAIR")


def main(workdirs: list[str]) -> None:
    print("| run | style | to its site | site shares | GM/WM gen / real | CSF/GM gen / real | CSF / GM / WM generated |")
    print("|---|---|---|---|---|---|---|")
    reals: dict[str, dict] = {}
    for workdir in workdirs:
        path = Path(workdir) / "evaluation" / "style_match" / "metrics.json"
        if not path.is_file():
            print(f"| {Path(workdir).name} | unfinished | | | | | |")
            continue
        styles = json.loads(path.read_text())["styles"]
        for source in SOURCES:
            if source not in styles:
                continue
            entry = styles[source]
            gen, real = entry["generated"], entry["real"]
            reals[source] = real
            shares = ", ".join(f"{k} {v:.2f}" for k, v in entry["site_shares"].items() if v >= 0.01)
            print(f"| {Path(workdir).name} | {source} | {entry['site_match']:.2f} | {shares} "
                  f"| {gen['gm_wm']:.3f} / {real['gm_wm']:.3f} | {gen['csf_gm']:.3f} / {real['csf_gm']:.3f} "
                  f"| {gen['csf']:.3f} / {gen['gm']:.3f} / {gen['wm']:.3f} |")
    print("\nReal test images (the reference):\n")
    print("| site | CSF / GM / WM | GM/WM | CSF/GM |")
    print("|---|---|---|---|")
    for source, real in reals.items():
        print(f"| {source} | {real['csf']:.3f} / {real['gm']:.3f} / {real['wm']:.3f} | {real['gm_wm']:.3f} "
              f"| {real['csf_gm']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
