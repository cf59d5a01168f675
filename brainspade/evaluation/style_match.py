"""Does a style reach the image? Tissue levels and a site classifier's verdict on styled images.

For every style source (train-split slices of each data set and modality), the image generator
styles held-out PV maps of the source data sets (test split, so their tissues are known) and the
images are compared with *real* images of the style's site: a target site's dev subjects (the style match
chooses settings, and settings are chosen on dev subjects; test subjects are for the report), a source
site's test subjects:
- appearance match: mean intensity per tissue (voxels with PV > 0.9), each image rescaled so its
  brain's 1st-99th percentile spans [0, 1], clipped (a positive scale, so ratios are defined), and the
  GM/WM and CSF/GM ratios of those means;
- site match: a classifier trained on real train-split slices of *every* site (source and
  target; evaluation only, nothing trains on its verdict) names the site each image looks like.
PROTOCOL: no target test image is read here, and of a target's labels only its dev subjects'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from brainspade.data.datasets import heldout_label_indices, style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.evaluation.metrics import TISSUES, tissue_levels
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.generation.site_look import LookStore, fit_site_look
from brainspade.generation.styles import style_bank_from_cache
from brainspade.settings import SiteLookSettings


def site_shares(classifier: ModalityClassifier, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """The share of `images` the classifier assigns to each data set (its data-set head's arg-max)."""
    votes = np.zeros(len(classifier.datasets))
    for start in range(0, len(images), batch_size):
        _, dataset_probs = classifier.predict(images[start : start + batch_size])
        votes += np.bincount(dataset_probs.argmax(1).cpu().numpy(), minlength=len(votes))
    return {name: float(v / len(images)) for name, v in zip(classifier.datasets, votes, strict=True)}


@torch.no_grad()
def style_match(generator: ImageGenerator, site_classifier: ModalityClassifier, cache: SliceCache,
                sources: list[str], max_images: int, batch_size: int, seed: int,
                site_look: SiteLookSettings | None = None, fit_batch_size: int | None = None,
                store: LookStore | None = None, site_look_sites: Sequence[str] | None = None) -> dict:
    """Per style source: the site classifier's shares and the tissue levels of generated vs real images.

    With `site_look` enabled, each source is also measured after the site look, fitted as `sample` fits it for a
    set styled by that source with the same seed (and `fit_batch_size`, sampling's), under "with_appearance_transfer";
    with a `store`, a look `sample` already fitted is read back rather than fitted again. `site_look_sites` (None:
    every site) names the sites measured after the site look; the others are measured with the generator alone.
    """
    rng = np.random.default_rng(seed)
    heldout = heldout_label_indices(cache, sources)
    if len(heldout) == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {sources} have no test-split label maps")
    chosen_maps = np.sort(rng.choice(heldout, size=min(max_images, len(heldout)), replace=False))
    pv_maps = torch.from_numpy(np.stack([cache.pv_map(int(i)) for i in chosen_maps]))
    table = cache.image_table
    results: dict = {}
    for dataset in sorted(set(table["dataset"].tolist())):
        for modality in sorted(set(table["modality"][cache.image_indices(datasets=[dataset])].tolist())):
            candidates = style_image_indices(cache, dataset, modality)
            split = "test" if dataset in sources else "dev"
            real = cache.image_indices(split=split, datasets=[dataset], modalities=[modality])
            if len(candidates) == 0 or len(real) == 0:
                continue
            styles = rng.choice(candidates, size=len(pv_maps), replace=len(candidates) < len(pv_maps))
            style_images = torch.stack([torch.from_numpy(cache.image(int(i)))[None] for i in styles])
            fake = torch.cat([
                generator.generate(pv_maps[s : s + batch_size], style_images[s : s + batch_size],
                                   [seed + 7919 * (k + 1) for k in range(s, min(s + batch_size, len(pv_maps)))]).cpu()
                for s in range(0, len(pv_maps), batch_size)])
            real = np.sort(rng.choice(real, size=min(max_images, len(real)), replace=False))
            real_images = np.stack([cache.image(int(i))[None] for i in real])
            real_maps = np.stack([cache.pv_map(int(table["label_index"][i])) for i in real])
            shares = site_shares(site_classifier, fake, batch_size)
            transferred = None
            if site_look is not None and site_look.enabled and (site_look_sites is None or dataset in site_look_sites):
                # Its own random draws: the generator-only numbers and real images drawn stay those of a run without it.
                look = fit_site_look(generator.generate, cache, sources, style_bank_from_cache(cache, dataset, modality),
                                     site_look, seed, fit_batch_size or batch_size, store)
                if look is None:  # as `sample` leaves it
                    moved, described = fake, "none: a source site keeps the generator's look"
                else:
                    moved = torch.from_numpy(look.apply(
                        fake.numpy(), [seed + 15485863 + k for k in range(len(fake))], pv_maps.numpy()))
                    described = look.describe()
                moved_shares = site_shares(site_classifier, moved, batch_size)
                transferred = {"site_match": moved_shares.get(dataset), "site_shares": moved_shares,
                               "generated": tissue_levels(moved.numpy(), pv_maps.numpy(), cache.channels),
                               "transfer": described}
            results[f"{dataset}/{modality}"] = {
                "n": len(pv_maps), "site": dataset, "real_split": split,
                "site_match": shares.get(dataset),
                "site_shares": shares,
                "generated": tissue_levels(fake.numpy(), pv_maps.numpy(), cache.channels),
                "real": tissue_levels(real_images, real_maps, cache.channels),
                "real_site_shares": site_shares(site_classifier, torch.from_numpy(real_images), batch_size),
            }
            if transferred is not None:
                results[f"{dataset}/{modality}"]["with_appearance_transfer"] = transferred
    return {"styles": results, "pv_maps": "test split of " + ", ".join(sources), "threshold": 0.9}


def style_match_table(metrics: dict) -> str:
    """Markdown: one row per style source and path (the generator alone; with the site appearance transfer)."""
    lines = ["| style source | path | n | assigned to its site | site shares | generated CSF / GM / WM | real CSF / GM / WM "
             "| GM/WM generated / real | CSF/GM generated / real | real images (split) assigned to their site |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def levels(entry: dict) -> str:
        return " / ".join(f"{entry[t]:.3f}" if t in entry else "-" for t in TISSUES)

    def ratio(entry: dict, name: str) -> str:
        return f"{entry[name]:.3f}" if name in entry else "-"

    for source, entry in metrics["styles"].items():
        real_match = entry["real_site_shares"].get(entry["site"])
        paths = [("generator", entry)]
        if "with_appearance_transfer" in entry:
            moved = entry["with_appearance_transfer"]
            paths.append((f"+ appearance transfer ({moved['transfer']})", moved))
        for path, result in paths:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in result["site_shares"].items() if v > 0)
            match = "-" if result["site_match"] is None else f"{result['site_match']:.2f}"
            lines.append(
                f"| {source} | {path} | {entry['n']} | {match} | {shares} | {levels(result['generated'])} "
                f"| {levels(entry['real'])} | {ratio(result['generated'], 'gm_wm')} / {ratio(entry['real'], 'gm_wm')} "
                f"| {ratio(result['generated'], 'csf_gm')} / {ratio(entry['real'], 'csf_gm')} "
                f"| {'-' if real_match is None else f'{real_match:.2f}'} ({entry.get('real_split', 'test')}) |")
    return "\n".join(lines)
