"""The site look: a site's look measured without labels (measure), the pooled quantile map, the fitted scanner model,
the generator-input appearance statistics, and the fit on reference images the generator makes."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import disc_slice
from scipy.ndimage import binary_erosion, binary_fill_holes, gaussian_filter, median_filter

from brainspade.data.intensity import apply_bias, mix_tissues, rician_magnitude
from brainspade.generation.site_look import SiteLook, fit_site_look, look_applies, reference_look
from brainspade.generation.site_look.measure import (
    brain_interior,
    brain_interiors,
    brain_masks,
    median_3x3,
    robust_sd,
)
from brainspade.generation.site_look.quantile_map import (
    Appearance,
    QuantileMap,
    fit_quantile_map,
    measure_appearance,
)
from brainspade.generation.site_look.scanner_model import ScannerModel, fit_scanner_model, mean_tissue_levels
from brainspade.generation.site_look.statistics import STATISTICS, appearance_statistics, gaussian_blur
from brainspade.settings import SiteLookSettings

CHANNELS = ("background", "csf", "gm", "wm")


def look_settings(**keys) -> SiteLookSettings:
    return SiteLookSettings(**{"enabled": True, "method": "quantile_map", "levels": True, "reference_images": 8,
                               "blurs": [0.0], "generator_texture": 1.0, **keys})


# ---------------------------------------------------------------- what is applied, and where


def test_the_look_is_off_by_default_and_a_source_site_keeps_the_generators_look_under_the_scanner_model():
    sources = ["siteA", "siteT"]
    model = look_settings(method="site_model")
    assert not look_applies(model, "siteA", sources)  # the generator was trained to reconstruct siteA
    assert look_applies(model, "siteB", sources) and look_applies(model, None, sources)  # a target site, a folder
    assert look_applies(look_settings(), "siteA", sources)  # the quantile map still maps a source's contrast
    # Nothing is drawn or read when there is nothing to fit (no cache, no bank needed).
    assert fit_site_look(None, None, sources, None, look_settings(enabled=False), 0, 4) is None
    bank = type("Bank", (), {"dataset": "siteA"})()
    assert fit_site_look(None, None, sources, bank, model, 0, 4) is None


def test_a_fitted_scanner_model_is_reused_for_the_same_inputs_and_fitted_again_for_others(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from brainspade.engine.stage import StageFolder
    from brainspade.generation.site_look import LookStore
    from brainspade.generation.styles import StyleBank

    StageFolder(tmp_path / "slices", "cache-1").finish({})
    maps = label_maps(4, seed=1)
    cache = SimpleNamespace(folder=tmp_path / "slices", channels=CHANNELS, pv_map=lambda i: maps[i])
    bank = StyleBank("T1", "siteB", brain_slices(4, seed=2), ["b"] * 4)
    monkeypatch.setattr("brainspade.generation.site_look.generator_label_indices", lambda cache, sources: np.arange(4))
    fits = []

    def fit(generate, pv_maps, site_slices, own_slices, settings, seed, batch_size, channels):
        fits.append(seed)
        return ScannerModel(CHANNELS, (0.0, 0.4 + 0.01 * len(fits), 1.0, 1.3), 0.5, 0.05, 0.05, 0.05, 0.01,
                            settings.generator_texture)

    monkeypatch.setattr("brainspade.generation.site_look.reference_look", fit)
    store = LookStore(tmp_path / "site_looks", "generator-1")
    extension = look_settings(method="site_model", generator_texture=0.25)
    first = fit_site_look(None, cache, ["siteA"], bank, extension, 0, 4, store)
    ablation = fit_site_look(None, cache, ["siteA"], bank, dataclasses.replace(extension, generator_texture=0.0), 0, 4,
                             store)
    assert len(fits) == 1  # the render-only ablation reuses the extension's fit
    assert ablation.levels == first.levels and (first.generator_texture, ablation.generator_texture) == (0.25, 0.0)

    fit_site_look(None, cache, ["siteA"], bank, extension, 1, 4, store)  # another seed
    fit_site_look(None, cache, ["siteA"], bank, extension, 0, 4, LookStore(store.folder, "generator-2"))
    assert len(fits) == 3
    for record in store.folder.iterdir():
        record.write_text('{"channels": ["background"], "levels": [NaN]}')
    again = fit_site_look(None, cache, ["siteA"], bank, extension, 0, 4, store)  # a broken record is fitted again
    assert len(fits) == 4 and again.levels != first.levels
    assert fit_site_look(None, cache, ["siteA"], bank, extension, 0, 4, store).levels == again.levels


def test_both_looks_apply_to_generated_pairs_as_one_protocol():
    maps = label_maps(3, seed=5)
    images = np.einsum("schw,c->shw", maps, np.array([-3.0, -2.0, 0.0, 1.5]))[:, None].astype(np.float32)
    flat = Appearance(-3.0, tuple(np.linspace(-2.0, 1.5, 99)), 0.0, 3)
    looks: list[SiteLook] = [
        QuantileMap(flat, dataclasses.replace(flat, quantiles=tuple(np.linspace(-1.0, 1.0, 99))), 0.1),
        ScannerModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=0.5, texture=0.05, bias=0.05, noise=0.05, misfit=0.0),
    ]
    for look in looks:
        moved = look.apply(images, [1, 2, 3], maps)
        assert moved.shape == images.shape and moved.dtype == np.float32 and np.isfinite(moved).all()
        assert not np.allclose(moved, images)
        assert look.describe() and isinstance(look.as_dict(), dict)


# ---------------------------------------------------------------- measured from intensities alone


def test_the_brain_and_the_noise_estimate_do_not_move_with_the_noise_level():
    """A noisier site gets neither a wider brain nor a noise estimate driven by its tissue borders."""
    clean, noisy = brain_slices(1, noise=0.02)[0], brain_slices(1, noise=0.2, seed=1)[0]
    assert abs(int(brain_interior(noisy).sum()) - int(brain_interior(clean).sum())) < 0.01 * brain_interior(clean).sum()
    values = np.random.default_rng(0).normal(0.0, 0.2, 10_000)
    values[:300] += 5.0  # 3% outliers, as tissue borders in a residual
    assert robust_sd(values) == pytest.approx(0.2, rel=0.1)


def test_a_stack_of_slices_is_measured_as_scipys_filters_measure_each_slice_on_its_own():
    """The fit measures every render as one stack: each slice must get exactly what the 2D filters give it, ties and
    edges included, and nothing may cross from one slice to the next (a ring over an empty slice is still filled)."""
    rng = np.random.default_rng(3)
    ring = np.zeros((2, 12, 12))
    ring[0, 2:10, 2:10], ring[0, 4:8, 4:8] = 1.0, 0.0  # a hole inside a ring; the next slice is empty
    disc = disc_slice(0.0)[0, 0].double().numpy()
    discs = np.stack([disc + rng.normal(0, 0.05, disc.shape) for _ in range(3)])
    for stack in (rng.normal(size=(6, 24, 20)), rng.integers(0, 3, size=(6, 9, 7)).astype(float), ring, discs):
        medians = np.stack([median_filter(image, size=3, mode="nearest") for image in stack])
        assert np.array_equal(median_3x3(stack), medians)
        masks = []
        for smooth in medians:
            low, high = np.percentile(smooth, [1, 99])
            masks.append(binary_fill_holes(smooth > low + 0.1 * (high - low)))
        assert np.array_equal(brain_masks(stack), np.stack(masks))
        interiors = [binary_erosion(mask, np.ones((3, 3), dtype=bool), iterations=2) for mask in masks]
        assert np.array_equal(brain_interiors(np.stack(masks)), np.stack(interiors))
    assert brain_masks(ring)[0, 5, 5]  # the ring's hole is brain: the empty slice beside it does not reach it


# ---------------------------------------------------------------- the pooled quantile map


def brain_slices(n: int, levels=(-1.5, 0.0, 1.0), noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(n, 64, 64) slices: a dark background and a 'brain' disc of three concentric tissues with blurred
    (partial-volume) borders, z-score-like."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64]
    slices = []
    for _ in range(n):
        radius = np.hypot(y - 32, x - 32)
        image = np.full((64, 64), -4.0)
        image[radius < 26] = levels[1]
        image[radius < 16] = levels[2]
        image[radius < 6] = levels[0]
        slices.append(gaussian_filter(image, 1.0) + noise * rng.standard_normal(image.shape))
    return np.stack(slices).astype(np.float32)


def tissue_means(images: np.ndarray) -> np.ndarray:
    """Mean intensity of the three tissues of `brain_slices`, away from their blurred borders."""
    y, x = np.mgrid[:64, :64]
    radius = np.hypot(y - 32, x - 32)
    return np.array([images[:, band].mean() for band in (radius < 3, (radius > 9) & (radius < 13),
                                                          (radius > 19) & (radius < 23))])


def test_noise_is_measured_and_contrast_reaches_the_quantiles():
    clean, noisy = measure_appearance(brain_slices(8, noise=0.02)), measure_appearance(brain_slices(8, noise=0.2))
    assert noisy.noise == pytest.approx(0.2 * np.sqrt(8 / 9), rel=0.15)  # the 3x3 residual of white noise
    assert clean.noise < 0.05
    flat = measure_appearance(brain_slices(8, levels=(-1.0, 0.3, 0.8), noise=0.02))
    # A flatter contrast: the brain's upper quantiles sit closer to its median.
    assert flat.quantiles[89] - flat.quantiles[49] < clean.quantiles[89] - clean.quantiles[49]


def test_transfer_gives_generated_images_the_sites_contrast_and_noise():
    generated = brain_slices(16, noise=0.02, seed=1)
    site = brain_slices(16, levels=(-1.0, 0.3, 0.8), noise=0.2, seed=2)
    transfer = fit_quantile_map(generated, site)
    assert transfer.added_noise > 0.1  # less than the site's 0.2: the intensity map also stretches the generated noise
    moved = transfer.apply(generated[:, None], seeds=range(16))[:, 0]
    assert moved.shape == generated.shape and moved.dtype == np.float32
    after = measure_appearance(moved)
    assert after.noise == pytest.approx(measure_appearance(site).noise, rel=0.15)
    # The tissue levels move from the generated ones (-1.5, 0, 1) to the site's (-1, 0.3, 0.8).
    assert np.abs(tissue_means(moved) - tissue_means(site)).max() < 0.15
    assert np.abs(tissue_means(generated) - tissue_means(site)).max() > 0.4
    # Monotone: the order of intensities (tissues) is kept.
    ramp = np.linspace(-6, 3, 200)
    assert np.all(np.diff(transfer.map_intensities(ramp)) > 0)


def test_transfer_noise_is_seeded_per_image():
    transfer = fit_quantile_map(brain_slices(8, noise=0.02), brain_slices(8, noise=0.2, seed=3))
    images = brain_slices(4, noise=0.02, seed=4)[:, None]
    together = transfer.apply(images, seeds=[10, 11, 12, 13])
    alone = transfer.apply(images[2:3], seeds=[12])
    np.testing.assert_array_equal(together[2], alone[0])
    assert not np.array_equal(transfer.apply(images[2:3], seeds=[99]), alone)


def test_the_generators_texture_deficit_on_its_own_data_is_not_added_as_noise():
    """What the generator lacks against its own training images is texture it cannot make: only a site's
    noise beyond that deficit is added (a style from the training data itself gets none)."""
    generated, own = brain_slices(16, noise=0.02, seed=5), brain_slices(16, noise=0.1, seed=6)
    site = brain_slices(16, noise=0.2, seed=7)
    without = fit_quantile_map(generated, site)
    with_baseline = fit_quantile_map(generated, site, baseline=(generated, own))
    assert with_baseline.added_noise < without.added_noise
    assert with_baseline.added_noise == pytest.approx(np.sqrt(0.2**2 - 0.1**2), rel=0.25)
    assert fit_quantile_map(generated, own, baseline=(generated, own)).added_noise == 0.0
    assert fit_quantile_map(generated, site, map_levels=False).site == without.generated


def test_reference_look_fits_on_what_the_generator_makes():
    pv_maps = np.zeros((8, 2, 64, 64), np.float32)

    def generate(maps, styles, seeds):  # a "generator" that returns a clean version of its style's anatomy
        return torch.from_numpy(brain_slices(len(maps), noise=0.02, seed=seeds[0]))[:, None]

    site = brain_slices(8, levels=(-1.0, 0.3, 0.8), noise=0.2, seed=8)
    transfer = reference_look(generate, pv_maps, site, None, look_settings(), seed=0, batch_size=4)
    assert transfer.added_noise > 0.1
    assert transfer.site == measure_appearance(site)


def test_a_blurrier_site_gets_its_blur_and_the_generators_own_data_none():
    generated = brain_slices(16, noise=0.01, seed=9)
    site = gaussian_filter(brain_slices(16, noise=0.01, seed=10), (0, 1.0, 1.0))
    candidates = (0.0, 0.5, 1.0, 1.5, 2.0)
    assert fit_quantile_map(generated, site, blur_sigmas=candidates).blur == pytest.approx(1.0, abs=0.5)
    assert fit_quantile_map(generated, generated, blur_sigmas=candidates).blur == 0.0
    # Relative to the generator's own data: a site as sharp as the training data gets no blur.
    own = brain_slices(16, noise=0.01, seed=11)
    assert fit_quantile_map(generated, own, baseline=(generated, own), blur_sigmas=candidates).blur == 0.0


def test_a_brain_darker_than_its_background_does_not_fold_the_map():
    """FLAIR: suppressed CSF darker than the background, so the generated brain's 1st percentile lies below its
    background (numbers of a demo's S_les fit). The map stays monotone, the background stays background and
    nothing is stretched to extreme values."""
    levels = np.linspace(0, 1, 99)
    generated = Appearance(-4.04, tuple(-4.10 + 5.74 * levels**0.5), 0.1, 64)
    site = Appearance(-3.91, tuple(-2.94 + 5.61 * levels**0.5), 0.1, 64)
    transfer = QuantileMap(generated, site, 0.0)
    ramp = np.linspace(-8, 4, 600)
    mapped = transfer.map_intensities(ramp)
    assert np.all(np.diff(mapped) > 0)
    assert float(transfer.map_intensities(np.array([-4.04]))[0]) == pytest.approx(-3.91, abs=1e-3)  # background
    assert mapped.min() > -8 - 2 and mapped.max() < 4 + 2


# ---------------------------------------------------------------- the scanner model


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
    truth = ScannerModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=1.0, texture=0.08, bias=0.05, noise=0.06, misfit=0.0)
    site_slices = truth.render(label_maps(32, seed=1), None, range(32))  # other anatomy than the references'
    start = np.array([-3.0, -2.0, 0.0, 1.5])  # a T1 start with other contrast (GM/WM 0.67 of the way up)
    fitted = fit_scanner_model(site_slices, label_maps(32, seed=2), CHANNELS, start, seed=0)
    gm, wm = CHANNELS.index("gm"), CHANNELS.index("wm")
    assert fitted.levels[gm] / fitted.levels[wm] == pytest.approx(1.0 / 1.25, abs=0.05)
    assert fitted.levels[CHANNELS.index("csf")] == pytest.approx(0.45, abs=0.15)  # a small share: least certain
    assert fitted.noise == pytest.approx(0.06, abs=0.03) and fitted.blur == pytest.approx(1.0, abs=0.5)
    assert fitted.texture == pytest.approx(0.08, abs=0.04)
    assert fitted.misfit < 0.05


def test_a_site_z_scored_in_a_wider_brain_than_its_own_is_fitted_with_the_same_contrast():
    # An unlabelled scan is z-scored in the template's brain, which takes in dark pixels around the brain: on the
    # cache's scale its brain values are narrower than a render's, and the fit once shrank WM towards GM for it.
    truth = ScannerModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=1.0, texture=0.08, bias=0.05, noise=0.06, misfit=0.0)
    site_slices = truth.render(label_maps(32, seed=1), None, range(32))
    y, x = np.mgrid[:48, :48]
    template = np.hypot(y - 24, x - 24) < 23  # the brain's discs have radii 17-21
    wider = np.stack([(s - s[template].mean()) / s[template].std() for s in site_slices])
    start = np.array([-3.0, -2.0, 0.0, 1.5])
    fitted = [fit_scanner_model(slices, label_maps(32, seed=2), CHANNELS, start, seed=0)
              for slices in (site_slices, wider)]
    gm, wm = CHANNELS.index("gm"), CHANNELS.index("wm")
    assert [f.levels[gm] / f.levels[wm] for f in fitted] == pytest.approx([1.0 / 1.25] * 2, abs=0.05)


def test_applied_to_generated_pairs_the_site_levels_replace_the_generators_and_its_texture_stays():
    maps = label_maps(6, seed=3)
    rng = np.random.default_rng(0)
    texture = 0.2 * rng.standard_normal(maps.shape[:1] + maps.shape[2:]) * (maps[:, 0] < 0.5)
    generated = np.einsum("schw,c->shw", maps, np.array([-3.0, -2.0, 0.0, 1.5])) + texture
    site = ScannerModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=0.0, texture=0.0, bias=0.0, noise=0.0, misfit=0.0)
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


def test_the_phantoms_mixing_bias_and_rician_noise_render_2d_stacks_as_3d_volumes():
    """The scanner model renders with the phantom's own image model (data/intensity.py), whatever the array's shape."""
    rng = np.random.default_rng(0)
    volume = np.moveaxis(label_maps(3, seed=6), 1, -1).transpose(1, 2, 0, 3)  # (H, W, S, C), channels last
    stack = np.moveaxis(volume, (2, 3), (0, 1))  # (S, C, H, W)
    levels, textures = [0.0, 0.3, 0.6, 0.9], 1.0 + 0.05 * rng.standard_normal(volume.shape)
    mixed = mix_tissues(volume, levels, list(np.moveaxis(textures, -1, 0)))
    np.testing.assert_allclose(mix_tissues(stack, levels, np.moveaxis(textures, (2, 3), (1, 0)), axis=1),
                               np.moveaxis(mixed, 2, 0))
    field, real, imaginary = (rng.standard_normal(mixed.shape) for _ in range(3))
    biased = apply_bias(mixed, 0.1, field)
    np.testing.assert_allclose(biased, mixed * np.exp(0.1 * field))
    magnitude = rician_magnitude(np.zeros((200, 200)), 0.05, *rng.standard_normal((2, 200, 200)))
    assert magnitude.min() > 0 and magnitude.mean() == pytest.approx(0.05 * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh


def test_texture_bias_and_noise_are_drawn_per_seed():
    maps = label_maps(2, seed=4)
    site = ScannerModel(CHANNELS, (0.0, 0.45, 1.0, 1.25), blur=0.5, texture=0.05, bias=0.1, noise=0.05, misfit=0.0)
    images = np.einsum("schw,c->shw", maps, np.array([-3.0, -2.0, 0.0, 1.5]))[:, None]
    np.testing.assert_array_equal(site.apply(images, [7, 8], maps), site.apply(images, [7, 8], maps))
    assert not np.allclose(site.apply(images, [7, 8], maps)[0], site.apply(images, [9, 8], maps)[0])


# ---------------------------------------------------------------- the generator's appearance statistics


def test_appearance_statistics_are_scale_free_and_move_with_noise_and_blur():
    image = disc_slice()
    noisy = disc_slice(noise=0.3)
    blurred = gaussian_blur(image, 2.0)
    stats = appearance_statistics(torch.cat([image, 2.5 * image + 4.0, noisy, blurred]))
    assert stats.shape == (4, len(STATISTICS)) and torch.isfinite(stats).all()
    torch.testing.assert_close(stats[0], stats[1], atol=1e-3, rtol=1e-3)  # a brighter copy: the same site
    noise, sharpness = STATISTICS.index("log_noise"), STATISTICS.index("log_sharpness")
    assert stats[2, noise] > stats[0, noise] + 1.0  # 15x more noise: clearly higher noise estimate
    assert stats[3, sharpness] < stats[0, sharpness] and stats[3, noise] < stats[0, noise]  # blur: softer, less noise


def test_appearance_statistics_follow_a_contrast_change():
    """A monotone remap of the tissue levels (the darker half further down) moves the quantiles: the statistics
    see contrast, not only brightness (which the re-standardisation removes)."""
    image = disc_slice()
    remapped = torch.where(image < 0, image - 1.0, image)
    stats = appearance_statistics(torch.cat([image, remapped]))
    assert (stats[1, :7] - stats[0, :7]).abs().max() > 0.1
