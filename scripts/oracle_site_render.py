"""What would a perfect style path give? Re-render a finished sample set's pairs with a phantom site's *true* scanner.

Diagnostic of the site look (benchmarks/image_generator.md): the phantom knows how each site's images are made, so the
pairs of a sample set (e.g. S_n-ood) can be given siteB's true look and trained on like any arm. Writes a new
workdir whose `slices` links to the source workdir's and whose `samples/<name>` holds the re-rendered set, ready for
`scripts/bench_segmenter.py --workdir OUT --arm <arm>`. Variants:
    render  the PV map with the site's jittered tissue levels and textures, then its scanner (no generator image);
    shift   the generated image's tissue levels replaced by the site's (its texture kept), then the site's scanner;
    model   a fitted `ScannerModel` (JSON, e.g. a sample set's site_look.json) applied as `sample` would.
Only in-plane blur is applied (a 2D slice has no neighbours to mix through-plane).

Usage:
    .venv/bin/python scripts/oracle_site_render.py --workdir W --samples S_n-ood --site siteB --variant render --out /tmp/o
    .venv/bin/python scripts/bench_segmenter.py --workdir /tmp/o --arm S_n-ood --on siteB/T1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--samples", default="S_n-ood")
    parser.add_argument("--site", default="siteB")
    parser.add_argument("--modality", default="T1")
    parser.add_argument("--variant", choices=("render", "shift", "model"), required=True)
    parser.add_argument("--model", type=Path, help="ScannerModel JSON (variant model)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from brainspade.data.intensity import apply_scanner, jittered_means, render_tissue_image, tissue_textures
    from brainspade.data.phantom import PHANTOM_CHANNELS, SITE_SPECS
    from brainspade.data.slicing import zscore_in_brain
    from brainspade.generation.site_look.scanner_model import ScannerModel, generated_texture

    spec = SITE_SPECS[args.site]
    voxel_mm = 2.0  # the cpu profile's resolution
    model = None
    if args.variant == "model":
        recorded = {"texture": 0.0, **json.loads(args.model.read_text())}  # version-1 fits had no texture
        model = ScannerModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    source = args.workdir / "samples" / args.samples
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "slices").exists():
        (args.out / "slices").symlink_to((args.workdir / "slices").resolve())
    target = args.out / "samples" / args.samples
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("imagesTr"))
    (target / "imagesTr").mkdir()

    for path in sorted((source / "imagesTr").glob("*.nii.gz")):
        key = path.name.replace("_0000.nii.gz", "")
        nii = nib.load(path)
        generated = np.asarray(nii.get_fdata(), np.float64).T  # NIfTI (W, H) -> the PV map's (H, W)
        pv = np.load(source / "pv" / f"{key}.npy").astype(np.float64)
        pv /= pv.sum(0, keepdims=True)
        seed = zlib.crc32(key.encode())
        if model is not None:
            image = model.apply(generated[None, None], [seed], pv[None])[0, 0]
        else:
            rng = np.random.default_rng(seed)
            brain = pv[PHANTOM_CHANNELS.index("background")] < 0.5
            means = jittered_means(rng, spec.contrasts[args.modality], 0.04)
            levels = np.array([means[c] for c in PHANTOM_CHANNELS])
            if args.variant == "render":  # the phantom's own renderer on a one-slice volume
                textures = tissue_textures(rng, PHANTOM_CHANNELS[1:], (*generated.shape, 1), voxel_mm)
                ideal = render_tissue_image(np.moveaxis(pv, 0, -1)[:, :, None], PHANTOM_CHANNELS, means, textures)[..., 0]
            else:
                ideal = np.maximum((pv * levels[:, None, None]).sum(0)
                                   + generated_texture(generated, pv, levels, 0), 0.0)
            # The site's scanner as the phantom applies it; its through-plane blur acts on a singleton axis: none.
            acquired = apply_scanner(rng, ideal[..., None].astype(np.float32), spec.scanner, voxel_mm)[..., 0]
            image = zscore_in_brain(acquired, brain)
        nib.save(nib.Nifti1Image(image.T.astype(np.float32), nii.affine, nii.header), target / "imagesTr" / path.name)
    print(f"{args.variant}: {len(list((target / 'imagesTr').glob('*.nii.gz')))} images in {target}")


if __name__ == "__main__":
    main()
