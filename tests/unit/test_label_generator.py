"""Label generator units: PV validity, a VAE that learns, exact resume, schema refusal, per-sample determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import settings_of
from monai.networks.nets import PatchDiscriminator

from brainspade.diffusion.samplers import ddim_step, ddpm_step, sampling_timesteps
from brainspade.engine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from brainspade.errors import BrainspadeError
from brainspade.evaluation.metrics import label_dice
from brainspade.generation.labels import LabelSampler, draw_conditions, make_scheduler, postprocess_pv_maps
from brainspade.losses.label_perceptual import make_label_perceptual_loss
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.training.label_batches import inverse_frequency_weights, lesion_positions, random_batch
from brainspade.training.label_vae import vae_training_step
from brainspade.training.loop import Checkpointer

CHANNELS = ["background", "csf", "gm", "wm", "tumour"]
SIZE = (32, 48)
SCHEDULER = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


def disc_pv_maps(n: int, seed: int = 0) -> torch.Tensor:
    """Concentric tissue discs with soft borders (and a small tumour in odd slices): valid PV maps (n, 5, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(SIZE[0]) - SIZE[0] / 2, torch.arange(SIZE[1]) - SIZE[1] / 2, indexing="ij")
    maps = []
    for i in range(n):
        radius = 11 + 3 * torch.rand((), generator=generator)
        distance = (y**2 + (x * 0.8) ** 2).sqrt()
        brain = (radius - distance + 0.5).clamp(0, 1)
        wm = (0.5 * radius - distance + 0.5).clamp(0, 1)
        gm = (0.8 * radius - distance + 0.5).clamp(0, 1) - wm
        tumour = ((3 - ((y - 2) ** 2 + (x + 4) ** 2).sqrt()).clamp(0, 1) * gm) if i % 2 else torch.zeros_like(gm)
        pv = torch.stack([1 - brain, brain - gm - wm, gm - tumour, wm, tumour])
        maps.append(pv / pv.sum(0, keepdim=True))
    return torch.stack(maps)


def resume(folder, signature, models, optimizers) -> int:
    return Checkpointer(folder, signature, models, optimizers).resume("test")


def tiny_vae() -> LabelVAE:
    return LabelVAE(len(CHANNELS), channels=(8, 16, 16), num_res_blocks=1, latent_channels=3, norm_num_groups=4)


def tiny_unet() -> ConditionedDiffusionUNet:
    return ConditionedDiffusionUNet(3, 1, channels=(16, 32, 32), attention_levels=(False, False, True),
                                    num_res_blocks=1, num_head_channels=8, norm_num_groups=8, condition_dim=16)


def test_vae_latent_shape_and_decoded_maps_are_valid_pv_maps():
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    mu, sigma = vae.encode(disc_pv_maps(2))
    assert mu.shape == sigma.shape == (2, 3, SIZE[0] // 4, SIZE[1] // 4)
    decoded = vae.decode(torch.randn(3, 3, SIZE[0] // 4, SIZE[1] // 4) * 5)
    assert decoded.shape == (3, len(CHANNELS), *SIZE)
    assert decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(decoded.sum(dim=1), torch.ones(3, *SIZE), atol=1e-5, rtol=0)


def test_postprocessing_sets_background_where_no_tissue_and_renormalises():
    pv = torch.full((1, 3, 2, 2), 0.05)
    pv[0, :, 0, 0] = torch.tensor([0.2, 0.7, 0.3])  # tissue above the threshold: kept, renormalised
    pv[0, 0, 1, 1] = -0.5  # out of range: clamped
    out = postprocess_pv_maps(pv, background_index=0, threshold=0.075)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.2, 0.7, 0.3]) / 1.2)
    assert out[0, 0, 0, 1] == 1 and out[0, 0, 1, 1] == 1 and out[0, 1:, 1, 1].sum() == 0


def test_vae_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    batch = disc_pv_maps(4)
    vae = tiny_vae()
    discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=len(CHANNELS), num_layers_d=2)
    optimizers = torch.optim.Adam(vae.parameters(), lr=2e-3), torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    weights = {"kl": 1e-6, "perceptual": 0.002, "adversarial": 0.005}
    perceptual = make_label_perceptual_loss("random_conv")
    totals = [vae_training_step(vae, discriminator, perceptual, *optimizers, batch, weights, True, 1.0)["total"]
              for _ in range(40)]
    assert np.mean(totals[-5:]) < 0.5 * np.mean(totals[:5])


def test_resume_continues_at_the_saved_step_with_the_saved_optimiser_state(tmp_path):
    data = disc_pv_maps(8)
    weights = {"kl": 1e-6, "perceptual": 0.002, "adversarial": 0.005}
    perceptual = make_label_perceptual_loss("random_conv")
    signature = {"channels": CHANNELS, "size": list(SIZE)}

    def fresh():
        vae = tiny_vae()
        discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=len(CHANNELS), num_layers_d=2)
        optimizers = {"vae": torch.optim.Adam(vae.parameters(), lr=1e-3),
                      "discriminator": torch.optim.Adam(discriminator.parameters(), lr=1e-3)}
        return {"vae": vae, "discriminator": discriminator}, optimizers

    def train(models, optimizers, steps):
        for _ in range(steps):
            batch = random_batch(data, 4, torch.device("cpu"))
            vae_training_step(models["vae"], models["discriminator"], perceptual, optimizers["vae"],
                              optimizers["discriminator"], batch, weights, True, 1.0)

    torch.manual_seed(0)
    models, optimizers = fresh()
    assert resume(tmp_path, signature, models, optimizers) == 0  # nothing saved yet: start at 0
    train(models, optimizers, 3)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, step=3, models=models, optimizers=optimizers, signature=signature)
    train(models, optimizers, 2)  # the uninterrupted run

    torch.manual_seed(123)  # a restarted process: other weights, other RNG state
    restarted, restarted_optimizers = fresh()
    assert resume(tmp_path, signature, restarted, restarted_optimizers) == 3
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["optimizers"]["vae"]["state"]
    restored = restarted_optimizers["vae"].state_dict()["state"]
    assert restored[0]["step"] == saved[0]["step"] == 3
    torch.testing.assert_close(restored[0]["exp_avg_sq"], saved[0]["exp_avg_sq"])
    train(restarted, restarted_optimizers, 2)
    for name in models:
        for a, b in zip(models[name].state_dict().values(), restarted[name].state_dict().values(), strict=True):
            torch.testing.assert_close(a, b)


def test_checkpoint_for_another_channel_schema_is_refused_in_one_line(tmp_path):
    models, optimizers = {"vae": tiny_vae()}, {}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, step=5, models=models,
                    signature={"channels": CHANNELS, "size": list(SIZE)})
    with pytest.raises(BrainspadeError) as error:
        resume(tmp_path, {"channels": CHANNELS[:4], "size": list(SIZE)}, models, optimizers)
    message = str(error.value)
    assert "\n" not in message and "channels" in message and str(tmp_path) in message


def test_ddim_and_ddpm_steps_recover_the_clean_sample_with_the_true_noise():
    alphas = make_scheduler(SCHEDULER).alphas_cumprod
    torch.manual_seed(0)
    x0, eps, fresh = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    noisy = alphas[500].sqrt() * x0 + (1 - alphas[500]).sqrt() * eps
    # Deterministic DDIM with the true noise lands exactly on the forward-process point at t_prev.
    expected = alphas[300].sqrt() * x0 + (1 - alphas[300]).sqrt() * eps
    torch.testing.assert_close(ddim_step(noisy, eps, 500, 300, alphas, None, eta=0.0), expected)
    for step in (ddim_step, ddpm_step):
        torch.testing.assert_close(step(noisy, eps, 500, -1, alphas, fresh, 1.0), x0, atol=1e-4, rtol=0)
    assert sampling_timesteps(1000, 50)[:2] == [980, 960] and sampling_timesteps(1000, 50)[-1] == 0


@pytest.fixture(scope="module")
def sampler() -> LabelSampler:
    torch.manual_seed(0)
    return LabelSampler(tiny_vae(), tiny_unet(), make_scheduler(SCHEDULER), 1.0, CHANNELS, ["tumour"], SIZE,
                        torch.device("cpu"))


@pytest.mark.parametrize(("name", "guidance"), [("ddim", 1.0), ("ddpm", 2.0)])
def test_a_sample_is_the_same_alone_or_in_a_batch(sampler, name, guidance):
    conditions = torch.tensor([[0.0, 0.3], [0.05, 0.5], [0.02, 0.6], [0.0, 0.7]])
    seeds = [11, 12, 13, 14]
    settings = settings_of("label_sampling", sampler=name, steps=6, guidance_scale=guidance)
    batch = sampler.sample(conditions, seeds, settings)
    alone = sampler.sample(conditions[2:3], seeds[2:3], settings)
    assert batch.shape == (4, len(CHANNELS), *SIZE)
    torch.testing.assert_close(alone[0], batch[2], atol=1e-5, rtol=0)
    assert batch.min() >= 0 and batch.max() <= 1
    torch.testing.assert_close(batch.sum(dim=1), torch.ones(4, *SIZE), atol=1e-3, rtol=0)
    assert not torch.allclose(batch[0], batch[3])  # other seeds give other maps


def test_conditions_depend_only_on_their_seed_and_respect_ranges():
    lesions = ["tumour", "edema"]
    many = draw_conditions([1, 2, 3], lesions, lesion_ranges={"tumour": [0.01, 0.05]}, slice_range=[0.2, 0.8])
    one = draw_conditions([2], lesions, lesion_ranges={"tumour": [0.01, 0.05]}, slice_range=[0.2, 0.8])
    torch.testing.assert_close(many[1], one[0])
    assert many.shape == (3, 3)
    assert ((many[:, 0] >= 0.01) & (many[:, 0] <= 0.05)).all() and (many[:, 1] == 0).all()
    assert ((many[:, 2] >= 0.2) & (many[:, 2] <= 0.8)).all()
    table = np.array([[0.1, 0.0, 0.4], [0.0, 0.2, 0.6]], dtype=np.float32)
    drawn = draw_conditions(range(20), lesions, training_conditions=table).numpy()
    assert all(any(np.allclose(row, real) for real in table) for row in drawn)
    with pytest.raises(BrainspadeError, match="wmh"):
        draw_conditions([0], lesions, lesion_ranges={"wmh": [0, 1]})


def test_label_dice_scores_argmax_overlap():
    real = disc_pv_maps(2)
    scores = label_dice(real, real, CHANNELS)
    assert all(score in (1.0, None) for score in scores.values()) and scores["gm"] == 1.0
    shifted = torch.roll(real, shifts=3, dims=3)
    assert label_dice(shifted, real, CHANNELS)["wm"] < 1.0


def test_inverse_frequency_weights_favour_rare_channels():
    pv = torch.zeros(4, 3, 8, 8)
    pv[:, 0] = 1.0
    pv[:, 0, :4] = 0.0
    pv[:, 1, :4] = 1.0
    pv[:, 0, 0, 0], pv[:, 2, 0, 0] = 0.0, 1.0  # channel 2 is rare
    pv[:, 1, 0, 0] = 0.0
    weights = inverse_frequency_weights(pv)
    assert weights.shape == (3,)
    assert torch.isclose(weights.mean(), torch.tensor(1.0))
    assert weights[2] > weights[1] > weights[0]


def test_lesion_enriched_batches_hold_the_requested_share_of_lesion_slices():
    from types import SimpleNamespace

    data = disc_pv_maps(40)
    data[:, CHANNELS.index("tumour")] = 0
    data[1::2, :, 10:13, 10:13] = torch.eye(len(CHANNELS))[CHANNELS.index("tumour")].view(-1, 1, 1)  # odd: a tumour
    proportions = np.tile([0.0, 0.02], 25)  # the cache's lesion proportions of 50 slices; we train on the first 40
    cache = SimpleNamespace(lesion_columns=["lesion_tumour"], label_table={"lesion_tumour": proportions})
    lesion = lesion_positions(cache, np.arange(40), 0.6, "label_vae.lesion_batch_fraction")
    assert lesion.tolist() == list(range(1, 40, 2))
    torch.manual_seed(0)
    batch = random_batch(data, 10, torch.device("cpu"), lesion, enriched_fraction=0.6)
    has_tumour = (batch.argmax(dim=1) == CHANNELS.index("tumour")).flatten(1).any(dim=1)
    assert has_tumour[:6].all()  # the enriched share comes first, every one with a lesion
    with pytest.raises(BrainspadeError, match="label_vae.lesion_batch_fraction=1.5"):
        lesion_positions(cache, np.arange(40), 1.5, "label_vae.lesion_batch_fraction")


def test_cross_entropy_term_is_reported_and_steepens_the_rare_channel_gradient():
    torch.manual_seed(0)
    batch = disc_pv_maps(4)
    perceptual = make_label_perceptual_loss("random_conv")

    def tumour_logit_gradient(cross_entropy: float) -> tuple[float, dict]:
        torch.manual_seed(1)
        vae = tiny_vae()
        discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=len(CHANNELS), num_layers_d=2)
        optimizers = torch.optim.SGD(vae.parameters(), lr=0.0), torch.optim.SGD(discriminator.parameters(), lr=0.0)
        weights = {"kl": 1e-6, "perceptual": 0.0, "adversarial": 0.0, "cross_entropy": cross_entropy}
        terms = vae_training_step(vae, discriminator, perceptual, *optimizers, batch, weights, False, 1e9)
        last = vae.autoencoder.decoder.blocks[-1]  # the output convolution: one row of weights per channel
        return float(last.conv.weight.grad[CHANNELS.index("tumour")].norm()), terms

    without, terms_without = tumour_logit_gradient(0.0)
    with_ce, terms_with = tumour_logit_gradient(1.0)
    assert "cross_entropy" not in terms_without and np.isfinite(terms_with["cross_entropy"])
    assert with_ce > 2 * without


@pytest.mark.parametrize("absent", [0.0, 1e-24])  # exact zero, and a confident softmax's underflowing share
def test_perceptual_gradient_stays_finite_where_a_channel_vanishes(absent):
    perceptual = make_label_perceptual_loss("random_conv")
    reconstruction = disc_pv_maps(2)
    reconstruction[:, CHANNELS.index("tumour")] = absent
    reconstruction.requires_grad_(True)
    perceptual(reconstruction, disc_pv_maps(2, seed=1)).backward()
    assert torch.isfinite(reconstruction.grad).all()


def test_non_finite_gradients_stop_training_before_the_weights_change():
    torch.manual_seed(0)
    vae = tiny_vae()
    discriminator = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=len(CHANNELS), num_layers_d=2)
    optimizers = torch.optim.Adam(vae.parameters(), lr=1e-3), torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    before = {name: value.clone() for name, value in vae.state_dict().items()}
    weights = {"kl": 1e-6, "perceptual": 0.0, "adversarial": 0.0, "cross_entropy": 1.0}
    broken = disc_pv_maps(2)
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(BrainspadeError, match="label VAE: the gradients are not finite.*checkpoint is intact: rerun with a lower label_vae.lr"):
        vae_training_step(vae, discriminator, make_label_perceptual_loss("random_conv"), *optimizers, broken,
                          weights, False, 1.0)
    for name, value in vae.state_dict().items():
        assert torch.equal(value, before[name]), name
