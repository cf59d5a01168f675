"""The site look: a target site's measured appearance put onto generated images, after the SPADE generator.

At CPU length the SPADE generator does not read a site's look from its style input (benchmarks/image_generator.md):
it carries the modality, not a scanner's contrast or noise. This package makes that step explicit, fitted on the
site's unlabelled images (a train split or a user's folder) and measured from intensities only (measure.py):
- quantile_map.py: the pooled brain-intensity quantile map and the noise a site has beyond the generator's own
  training data (images only);
- scanner_model.py: the site's tissue levels, texture, in-plane blur, bias and Rician noise, fitted by rendering
  the source label maps until they measure like the site's images, then put on each generated image with its
  label map;
- statistics.py: appearance statistics of a style slice, an input of the generator itself
  (`image_generator.style_appearance_input`).

Both looks are fitted the same way (`fit_site_look`): the generator styles train-split label maps of its source
data sets with the site's style slices, and the fit compares what it made with those slices.
PROTOCOL: only train splits and the (unlabelled) site slices are read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from brainspade.data.datasets import generator_label_indices, style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_json_atomic
from brainspade.engine.stage import config_fingerprint, finished_fingerprint
from brainspade.errors import BrainspadeError
from brainspade.generation.site_look.quantile_map import QuantileMap, fit_quantile_map
from brainspade.generation.site_look.scanner_model import ScannerModel, fit_scanner_model, mean_tissue_levels
from brainspade.generation.styles import StyleBank
from brainspade.settings import SiteLookSettings

Generate = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


class SiteLook(Protocol):
    """A fitted site look (`QuantileMap`, `ScannerModel`): what `sample` puts on each accepted image."""

    def apply(self, images: np.ndarray, seeds: Sequence[int], pv_maps: np.ndarray) -> np.ndarray:
        """(B, 1, H, W) generated images and their (B, C, H, W) PV maps -> float32 images with the site's look,
        image i's random draws seeded with seeds[i]."""
        ...

    def describe(self) -> str:
        """One line for the log and the reports."""
        ...

    def as_dict(self) -> dict:
        """Plain values for the record (the sample set's site_look.json)."""
        ...


def look_applies(settings: SiteLookSettings, site_dataset: str | None, sources: Sequence[str]) -> bool:
    """Whether the look re-renders a style site's images at all (False: they keep the generator's look).

    The scanner model is for sites the generator never learnt. A source site's look is the generator's own (it is
    trained to reconstruct those images), and re-rendering it with the 2D tissue model swaps the learnt texture for
    the model's: siteA-styled images were then called siteT by the site classifier and their CSF darkened
    (benchmarks/image_generator.md). The quantile map keeps mapping a source site's contrast (with no noise: the
    site is its own noise baseline).
    """
    return not (settings.method == "site_model" and site_dataset in sources)


def reference_look(generate: Generate, pv_maps: np.ndarray, site_slices: np.ndarray, own_slices: np.ndarray | None,
                   settings: SiteLookSettings, seed: int, batch_size: int,
                   channels: Sequence[str] | None = None) -> SiteLook:
    """Fit the look to a site from reference images the generator makes for it.

    Args:
        generate: the generator, (PV maps, style slices (B,1,H,W), seeds) -> images (B,1,H,W).
        pv_maps: (S, C, H, W) reference label maps (train split of the source data sets).
        site_slices: (S, H, W) slices of the site (the style bank), one per reference image.
        own_slices: (S, H, W) train slices of the generator's source data of the same modality (the noise
            baseline of the quantile map), or None when it has none.
        settings: the method and its keys (`reference_images` is how many `site_slices` the caller drew).
        seed: seeds the reference images and the fits.
        batch_size: images per generator call.
        channels: the PV channel names (site_model).
    """
    if settings.method == "site_model" and channels is None:
        raise ValueError("the site_model look needs the PV channel names (channels=...)")

    def made_with(styles: np.ndarray) -> np.ndarray:
        maps, style_images = torch.from_numpy(pv_maps).float(), torch.from_numpy(styles[:, None]).float()
        seeds = [seed + 104729 * (k + 1) for k in range(len(maps))]
        return torch.cat([generate(maps[s : s + batch_size], style_images[s : s + batch_size],
                                   seeds[s : s + batch_size]).cpu() for s in range(0, len(maps), batch_size)])[:, 0].numpy()

    generated = made_with(site_slices)
    if settings.method == "site_model":
        # The generator's levels for this style start the fit: they have the site's modality (its tissue order).
        fitted = fit_scanner_model(site_slices, pv_maps, channels, mean_tissue_levels(generated, pv_maps), seed)
        return dataclasses.replace(fitted, generator_texture=settings.generator_texture)
    if own_slices is None:
        baseline = None
    else:
        baseline = (generated if own_slices is site_slices else made_with(own_slices), own_slices)
    return fit_quantile_map(generated, site_slices, baseline, settings.levels, seed, settings.blurs)


@dataclass(frozen=True)
class LookStore:
    """Fitted scanner models kept for reuse (W/site_looks): a fit reads hundreds of renders, and the arms of one site
    (the extension and its render-only ablation) and the style match need the same one.

    `generator` is the fingerprint of the image generator that made the fit's reference images. A model is reused
    only for the same generator, slice cache, sources, style site and modality, seed, batch size and fit keys
    (`generator_texture` is applied after the fit, so it is not one of them); a record that does not read back as a
    model for the cache's channels is fitted again and replaced.
    """

    folder: Path
    generator: str

    def key(self, cache: SliceCache, sources: Sequence[str], bank: StyleBank, settings: SiteLookSettings, seed: int,
            batch_size: int) -> str:
        fit_keys = {k: v for k, v in dataclasses.asdict(settings).items() if k != "generator_texture"}
        return config_fingerprint({"generator": self.generator, "slices": finished_fingerprint(cache.folder),
                                   "sources": list(sources), "site": [bank.dataset, bank.modality], "seed": seed,
                                   "batch_size": batch_size, "fit": fit_keys})

    def load(self, key: str, channels: Sequence[str]) -> ScannerModel | None:
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return ScannerModel.from_dict(json.loads(path.read_text()), channels)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            print(f"[site-look] {path}: {error}; fitting the site model again", flush=True)
            return None

    def save(self, key: str, model: ScannerModel) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{key}.json", model.as_dict())


def fit_site_look(generate: Generate, cache: SliceCache, sources: Sequence[str], bank: StyleBank,
                  settings: SiteLookSettings, seed: int, batch_size: int,
                  store: LookStore | None = None) -> SiteLook | None:
    """The style bank's site look, fitted on the workdir's data; None when it is off or does not apply
    (`look_applies`: a source site may keep the generator's look). With a `store`, a scanner model fitted before
    for a site of the workdir with the same inputs is reused (the same model: the fit is seeded).

    `settings.reference_images` style slices are drawn from the bank, each styling one train-split label map of the
    source data sets. The quantile map's noise baseline is the sources' train slices of the bank's modality (none if
    they have no such images), or the site slices themselves when the site is a source: the generator's own training
    data gets no noise (two draws of the same site would differ by their estimation error only).
    """
    if not settings.enabled or not look_applies(settings, bank.dataset, sources):
        return None
    key = None
    if store is not None and settings.method == "site_model" and bank.dataset is not None:
        key = store.key(cache, sources, bank, settings, seed, batch_size)
        known = store.load(key, cache.channels)
        if known is not None:
            return dataclasses.replace(known, generator_texture=settings.generator_texture)
    draw = np.random.default_rng(seed)
    site_slices = np.stack([bank.image(bank.draw(draw)) for _ in range(settings.reference_images)])
    rng = np.random.default_rng(seed)
    n = len(site_slices)
    label_indices = generator_label_indices(cache, sources)
    if len(label_indices) == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {list(sources)} have no train-split label maps "
                              "to fit the site look on")
    pv_maps = np.stack([cache.pv_map(int(i)) for i in rng.choice(label_indices, n, replace=len(label_indices) < n)])
    site_slices = np.asarray(site_slices, np.float32)
    if settings.method == "site_model" or bank.dataset in sources:  # the scanner model has no noise baseline
        own_slices = site_slices
    else:
        own = np.concatenate([style_image_indices(cache, source, bank.modality) for source in sources])
        own_slices = (np.stack([cache.image(int(i)) for i in rng.choice(own, n, replace=len(own) < n)])
                      if len(own) else None)
    look = reference_look(generate, pv_maps, site_slices, own_slices, settings, seed, batch_size, cache.channels)
    if key is not None:
        store.save(key, look)
    return look


__all__ = ["LookStore", "QuantileMap", "ScannerModel", "SiteLook", "fit_site_look", "look_applies", "reference_look"]
