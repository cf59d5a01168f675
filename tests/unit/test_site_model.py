"""The site model: a scanner fitted to unlabelled slices by rendering known label maps, put onto generated pairs."""

import dataclasses

import numpy as np
import pytest

from brainspade.generation.site_model import SiteModel, fit_site_model, mean_tissue_levels

CHANNELS = ("background", "csf", "gm", "wm")


def label_maps(n: int, seed: int = 0, size: int = 48) -> np.ndarray:
    """(n, 4, size, size) PV maps: a brain disc of WM inside GM with a ventricle-sized CSF core (~7% of the brain),
    radii varying per slice, soft (partial-volume) borders."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    maps = []
    for _ in range(n):
        radius = np.hypot(y - size / 2 + rng.uniform(-2, 2), x - size / 2 + rng.uniform(-2, 2))
        brain, white, core = (1 / (1 + np.exp((radius - rng.uniform(*bounds)) / 0.7))  # soft discs
                              for bounds in ((17, 21), (10, 14), (4, 7)))
        maps.append(np.stack([1 - brain, core, brain - white, white - core]))
    return np.clip(np.stack(maps), 0, 1)


def test_the_fit_recovers_a_sites_tissue_contrast_texture_blur_and_noise_from_unlabelled_slices():
    # Tissues that vary within themselves: without a texture of its own the fit spread the quantiles by wrong levels.
    truth = SiteModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=1.0, texture=0.08, bias=0.05, noise=0.06, misfit=0.0)
    site_slices = truth.render(label_maps(32, seed=1), None, range(32))  # other anatomy than the references'
    start = np.array([-3.0, -2.0, 0.0, 1.5])  # a T1 start with other contrast (GM/WM 0.67 of the way up)
    fitted = fit_site_model(site_slices, label_maps(32, seed=2), CHANNELS, start, seed=0)
    gm, wm = CHANNELS.index("gm"), CHANNELS.index("wm")
    assert fitted.levels[gm] / fitted.levels[wm] == pytest.approx(1.0 / 1.25, abs=0.05)
    assert fitted.levels[CHANNELS.index("csf")] == pytest.approx(0.45, abs=0.15)  # a small share: least certain
    assert fitted.noise == pytest.approx(0.06, abs=0.03) and fitted.blur == pytest.approx(1.0, abs=0.5)
    assert fitted.texture == pytest.approx(0.08, abs=0.04)
    assert fitted.misfit < 0.05


def test_applied_to_generated_pairs_the_site_levels_replace_the_generators_and_its_texture_stays():
    maps = label_maps(6, seed=3)
    rng = np.random.default_rng(0)
    texture = 0.2 * rng.standard_normal(maps.shape[:1] + maps.shape[2:]) * (maps[:, 0] < 0.5)
    generated = np.einsum("schw,c->shw", maps, np.array([-3.0, -2.0, 0.0, 1.5])) + texture
    site = SiteModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=0.0, texture=0.0, bias=0.0, noise=0.0, misfit=0.0)
    moved = site.apply(generated[:, None], list(range(6)), maps)
    assert moved.shape == (6, 1, 48, 48) and moved.dtype == np.float32
    levels = mean_tissue_levels(moved[:, 0], maps)  # z-scored: compare the contrast, not the scale
    assert (levels[2] - levels[1]) / (levels[3] - levels[1]) == pytest.approx((1.0 - 0.45) / (1.25 - 0.45), abs=0.03)
    brain = maps[:, 0] < 0.5
    for k in range(6):
        assert moved[k, 0][brain[k]].mean() == pytest.approx(0.0, abs=1e-4)  # z-scored in the brain like the cache
        assert moved[k, 0][brain[k]].std() == pytest.approx(1.0, abs=1e-3)
    residual = moved[:, 0] - np.einsum("schw,c->shw", maps, levels)
    assert np.corrcoef(residual[brain], texture[brain])[0, 1] > 0.8  # what the generator drew beyond levels
    # generator_texture: the share of that texture kept; 0 renders the label maps with the model alone.
    def beyond_levels(images: np.ndarray) -> np.ndarray:  # each image's residual from its own tissue levels
        return np.stack([image - np.einsum("chw,c->hw", pv, mean_tissue_levels(image[None], pv[None]))
                         for image, pv in zip(images[:, 0], maps, strict=True)])[brain]

    kept = {share: beyond_levels(dataclasses.replace(site, generator_texture=share).apply(generated[:, None],
                                                                                          list(range(6)), maps))
            for share in (0.0, 0.5, 1.0)}
    assert kept[0.0].std() < 0.01 < kept[0.5].std() < kept[1.0].std()
    assert np.corrcoef(kept[0.5], texture[brain])[0, 1] > 0.8
    np.testing.assert_allclose(dataclasses.replace(site, generator_texture=0.0).apply(generated[:, None], [1], maps[:1]),
                               site.render(maps[:1], None, [1])[:, None], atol=1e-6)


def test_texture_bias_and_noise_are_drawn_per_seed():
    maps = label_maps(2, seed=4)
    site = SiteModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=0.5, texture=0.05, bias=0.1, noise=0.05, misfit=0.0)
    images = np.einsum("schw,c->shw", maps, np.array([-3.0, -2.0, 0.0, 1.5]))[:, None]
    np.testing.assert_array_equal(site.apply(images, [7, 8], maps), site.apply(images, [7, 8], maps))
    assert not np.allclose(site.apply(images, [7, 8], maps)[0], site.apply(images, [9, 8], maps)[0])
