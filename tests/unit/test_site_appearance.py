"""The site appearance transfer: a site's contrast and noise, measured without labels, reach generated images."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from brainspade.generation.site_appearance import fit_appearance_transfer, measure_appearance
from brainspade.generation.site_transfer import reference_transfer


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
    transfer = fit_appearance_transfer(generated, site)
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
    transfer = fit_appearance_transfer(brain_slices(8, noise=0.02), brain_slices(8, noise=0.2, seed=3))
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
    without = fit_appearance_transfer(generated, site)
    with_baseline = fit_appearance_transfer(generated, site, baseline=(generated, own))
    assert with_baseline.added_noise < without.added_noise
    assert with_baseline.added_noise == pytest.approx(np.sqrt(0.2**2 - 0.1**2), rel=0.25)
    assert fit_appearance_transfer(generated, own, baseline=(generated, own)).added_noise == 0.0
    assert fit_appearance_transfer(generated, site, map_levels=False).site == without.generated


def test_reference_transfer_fits_on_what_the_generator_makes():
    import torch

    pv_maps = np.zeros((8, 2, 64, 64), np.float32)

    def generate(maps, styles, seeds):  # a "generator" that returns a clean version of its style's anatomy
        return torch.from_numpy(brain_slices(len(maps), noise=0.02, seed=seeds[0]))[:, None]

    site = brain_slices(8, levels=(-1.0, 0.3, 0.8), noise=0.2, seed=8)
    transfer = reference_transfer(generate, pv_maps, site, None, seed=0, batch_size=4)
    assert transfer.added_noise > 0.1
    assert transfer.site == measure_appearance(site)


def test_a_blurrier_site_gets_its_blur_and_the_generators_own_data_none():
    generated = brain_slices(16, noise=0.01, seed=9)
    site = gaussian_filter(brain_slices(16, noise=0.01, seed=10), (0, 1.0, 1.0))
    candidates = (0.0, 0.5, 1.0, 1.5, 2.0)
    assert fit_appearance_transfer(generated, site, blur_sigmas=candidates).blur == pytest.approx(1.0, abs=0.5)
    assert fit_appearance_transfer(generated, generated, blur_sigmas=candidates).blur == 0.0
    # Relative to the generator's own data: a site as sharp as the training data gets no blur.
    own = brain_slices(16, noise=0.01, seed=11)
    assert fit_appearance_transfer(generated, own, baseline=(generated, own), blur_sigmas=candidates).blur == 0.0


def test_a_brain_darker_than_its_background_does_not_fold_the_map():
    """FLAIR: suppressed CSF darker than the background, so the generated brain's 1st percentile lies below its
    background (numbers of a demo's S_les fit). The map stays monotone, the background stays background and
    nothing is stretched to extreme values."""
    from brainspade.generation.site_appearance import Appearance, AppearanceTransfer

    levels = np.linspace(0, 1, 99)
    generated = Appearance(-4.04, tuple(-4.10 + 5.74 * levels**0.5), 0.1, 64)
    site = Appearance(-3.91, tuple(-2.94 + 5.61 * levels**0.5), 0.1, 64)
    transfer = AppearanceTransfer(generated, site, 0.0)
    ramp = np.linspace(-8, 4, 600)
    mapped = transfer.map_intensities(ramp)
    assert np.all(np.diff(mapped) > 0)
    assert float(transfer.map_intensities(np.array([-4.04]))[0]) == pytest.approx(-3.91, abs=1e-3)  # background
    assert mapped.min() > -8 - 2 and mapped.max() < 4 + 2
