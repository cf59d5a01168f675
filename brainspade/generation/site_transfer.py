"""Fit a site's look on reference images the generator makes for it: the pooled quantile map of
`site_appearance` or the scanner model of `site_model` (sampling.appearance_transfer_method).

Both are fitted the same way: the generator styles train-split label maps of its source data sets with
the site's (unlabelled) style slices, and the fit compares what it made with those slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from brainspade.data.datasets import generator_label_indices, style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.generation.site_appearance import AppearanceTransfer, fit_appearance_transfer
from brainspade.generation.site_model import SiteModel, fit_site_model, mean_tissue_levels

TRANSFER_METHODS = ("quantile_map", "site_model")

Generate = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


def transfer_applies(method: str, site_dataset: str | None, sources: Sequence[str]) -> bool:
    """Whether `sample` re-renders a style site's images at all (False: they keep the generator's look).

    The site model is for sites the generator never learnt. A source site's look is the generator's own (it is
    trained to reconstruct those images), and re-rendering it with the 2D tissue model swaps the learnt texture for
    the model's: siteA-styled images were then called siteT by the site classifier and their CSF darkened
    (benchmarks/image_generator.md, issue 19, sessions 11-13). The quantile map keeps transferring a source site's
    contrast (with no noise: the site is its own noise baseline).
    """
    return not (method == "site_model" and site_dataset in sources)


def reference_transfer(generate: Generate, pv_maps: np.ndarray, site_slices: np.ndarray,
                       own_slices: np.ndarray | None, seed: int, batch_size: int, map_levels: bool = True,
                       blur_sigmas: Sequence[float] = (0.0,), method: str = "quantile_map",
                       channels: Sequence[str] | None = None, generator_texture: float = 1.0
                       ) -> AppearanceTransfer | SiteModel:
    """Fit the transfer to a site from reference images the generator makes for it.

    Args:
        generate: the generator, (PV maps, style slices (B,1,H,W), seeds) -> images (B,1,H,W).
        pv_maps: (S, C, H, W) reference label maps (train split of the source data sets).
        site_slices: (S, H, W) slices of the site (the style bank), one per reference image.
        own_slices: (S, H, W) train slices of the generator's source data of the same modality (the noise
            baseline of the quantile map), or None when it has none.
        seed: seeds the reference images and the fits.
        batch_size: images per generator call.
        map_levels: False keeps the generator's intensities (quantile map: noise only).
        blur_sigmas: candidate blurs of the quantile map (see `fit_appearance_transfer`).
        method: "quantile_map" or "site_model".
        channels: the PV channel names (site_model).
        generator_texture: share of the generator's own texture the site model keeps (`SiteModel.generator_texture`).
    """
    if method not in TRANSFER_METHODS:
        raise ValueError(f"unknown appearance transfer method {method!r}; expected one of {list(TRANSFER_METHODS)}")
    if method == "site_model" and channels is None:
        raise ValueError("the site_model transfer needs the PV channel names (channels=...)")

    def made_with(styles: np.ndarray) -> np.ndarray:
        maps, style_images = torch.from_numpy(pv_maps).float(), torch.from_numpy(styles[:, None]).float()
        seeds = [seed + 104729 * (k + 1) for k in range(len(maps))]
        return torch.cat([generate(maps[s : s + batch_size], style_images[s : s + batch_size],
                                   seeds[s : s + batch_size]).cpu() for s in range(0, len(maps), batch_size)])[:, 0].numpy()

    generated = made_with(site_slices)
    if method == "site_model":
        # The generator's levels for this style start the fit: they have the site's modality (its tissue order).
        fitted = fit_site_model(site_slices, pv_maps, channels, mean_tissue_levels(generated, pv_maps), seed)
        return dataclasses.replace(fitted, generator_texture=generator_texture)
    if own_slices is None:
        baseline = None
    else:
        baseline = (generated if own_slices is site_slices else made_with(own_slices), own_slices)
    return fit_appearance_transfer(generated, site_slices, baseline, map_levels, seed, blur_sigmas)


def transfer_from_cache(generate: Generate, cache: SliceCache, sources: Sequence[str], modality: str,
                        site_slices: np.ndarray, seed: int, batch_size: int, map_levels: bool = True,
                        site_dataset: str | None = None, blur_sigmas: Sequence[float] = (0.0,),
                        method: str = "quantile_map", generator_texture: float = 1.0
                        ) -> AppearanceTransfer | SiteModel:
    """`reference_transfer` on the workdir's data (callers ask `transfer_applies` first: a source site may keep the
    generator's look): one reference image per site slice, on train-split label maps of
    the source data sets; the noise baseline is their train slices of `modality` (none if they have no such images),
    or the site slices themselves when the site is a source (`site_dataset`): the generator's own training data
    gets no noise (two draws of the same site would differ by their estimation error only).
    PROTOCOL: only train splits and the (unlabelled) site slices are read.
    """
    rng = np.random.default_rng(seed)
    n = len(site_slices)
    label_indices = generator_label_indices(cache, sources)
    if len(label_indices) == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {list(sources)} have no train-split label maps "
                              "to fit the appearance transfer on")
    pv_maps = np.stack([cache.pv_map(int(i)) for i in rng.choice(label_indices, n, replace=len(label_indices) < n)])
    site_slices = np.asarray(site_slices, np.float32)
    if method == "site_model" or site_dataset in sources:  # the site model has no noise baseline
        own_slices = site_slices
    else:
        own = np.concatenate([style_image_indices(cache, source, modality) for source in sources])
        own_slices = (np.stack([cache.image(int(i)) for i in rng.choice(own, n, replace=len(own) < n)])
                      if len(own) else None)
    return reference_transfer(generate, pv_maps, site_slices, own_slices, seed, batch_size, map_levels, blur_sigmas,
                              method, cache.channels, generator_texture)
