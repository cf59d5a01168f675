"""Units of the image generator: shapes, loss terms, style consistency, alpha validation, determinism, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import disc_slice, settings_of

from brainspade.engine.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    schema_signature,
)
from brainspade.errors import BrainspadeError
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.models.modality_classifier import ModalityDatasetClassifier
from brainspade.models.multiscale_patchgan import MultiScalePatchGAN
from brainspade.models.spade_generator import SpadeGenerator
from brainspade.models.style_encoder import StyleEncoder
from brainspade.settings import ImageGeneratorSettings
from brainspade.training.image_generator import GeneratorLosses, Networks

torch.set_num_threads(2)

CHANNELS = 6
SIZE = (32, 48)


def augmentation(probability: float):
    return settings_of("image_generator", appearance_augmentation={"probability": probability}).appearance_augmentation


def settings(**weights) -> ImageGeneratorSettings:
    return settings_of("image_generator", perceptual_network="classifier", weights=weights)


def build_image_models(args: dict) -> tuple[StyleEncoder, SpadeGenerator, MultiScalePatchGAN]:
    return (StyleEncoder(**args["style_encoder"]), SpadeGenerator(**args["generator"]),
            MultiScalePatchGAN(**args["discriminator"]))


def model_args() -> dict:
    return {
        "style_encoder": {"z_dim": 8, "channels": [8, 16]},
        "generator": {"label_channels": CHANNELS, "z_dim": 8, "size": list(SIZE), "channels": [16, 8, 8],
                      "spade_hidden": 8},
        "discriminator": {"in_channels": CHANNELS + 1, "num_scales": 2, "num_layers": 2, "channels": 8},
    }


def networks(seed: int = 0) -> Networks:
    torch.manual_seed(seed)
    style_encoder, generator, discriminator = build_image_models(model_args())
    classifier = ModalityDatasetClassifier(2, 2, init_features=8, growth_rate=4, block_config=(2, 2)).eval()
    classifier.requires_grad_(False)
    return Networks(style_encoder, generator, discriminator, classifier)


def pv_maps(batch: int, seed: int = 1) -> torch.Tensor:
    logits = torch.randn(batch, CHANNELS, *SIZE, generator=torch.Generator().manual_seed(seed)) * 3
    return logits.softmax(dim=1)


def fake_batch(batch: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pv = pv_maps(batch, seed)
    contrast = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.2, 0.8])
    image = torch.einsum("bchw,c->bhw", pv, contrast)[:, None]
    image = image + 0.05 * torch.randn(image.shape, generator=generator)
    return {
        "image": image, "pv_map": pv, "brain": (pv[:, :1] < 0.5).float(),
        "style": image.flip(-1), "style_modality": torch.tensor([0, 1, 0, 1][:batch]),
        "style_dataset": torch.tensor([0, -1, 1, 0][:batch]),
    }


def test_networks_give_the_documented_shapes():
    nets = networks()
    batch = fake_batch()
    mu, logvar = nets.style_encoder(batch["style"])
    assert mu.shape == logvar.shape == (4, 8)
    images = nets.generator(batch["pv_map"], mu)
    assert images.shape == (4, 1, *SIZE)
    scores, features = nets.discriminator(torch.cat([batch["pv_map"], images], dim=1))
    assert len(scores) == 2 and all(s.shape[:2] == (4, 1) for s in scores)
    assert scores[1].shape[-1] < scores[0].shape[-1]  # the second scale sees a halved input
    modality_logits, dataset_logits = nets.classifier(images)
    assert modality_logits.shape == dataset_logits.shape == (4, 2)


def generator_gradient(nets: Networks, cfg, batch, seed: int = 5) -> torch.Tensor:
    losses = GeneratorLosses(nets, cfg, torch.device("cpu"))
    parameters = [*nets.style_encoder.parameters(), *nets.generator.parameters()]
    torch.manual_seed(seed)
    terms, _ = losses.terms(batch)
    gradients = torch.autograd.grad(losses.total(terms), parameters, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gradients, parameters, strict=True)])


TERM_WEIGHTS = {
    "adversarial": {"adversarial": 0.0},
    "feature_matching": {"feature_matching": 0.0},
    "perceptual": {"perceptual": 0.0},
    "kl": {"kl": 0.0},
    "modality_dataset": {"modality": 0.0, "dataset": 0.0},
    "style_consistency": {"style_consistency": 0.0},
    "reconstruction": {"reconstruction": 0.0},
}


@pytest.mark.parametrize("term", sorted(TERM_WEIGHTS))
def test_each_loss_term_is_finite_and_moves_the_generator_gradient(term):
    nets, batch = networks(), fake_batch()
    louder = {"reconstruction": 1.0, "kl": 0.5}  # so that their share of the gradient is clearly visible
    cfg_on = settings(**louder)
    losses = GeneratorLosses(nets, cfg_on, torch.device("cpu"))
    torch.manual_seed(5)
    terms, _ = losses.terms(batch)
    assert term in terms and torch.isfinite(terms[term]) and terms[term].item() != 0.0
    with_term = generator_gradient(nets, cfg_on, batch)
    cfg_off = settings(**{**louder, **TERM_WEIGHTS[term]})
    without_term = generator_gradient(nets, cfg_off, batch)
    assert term not in GeneratorLosses(nets, cfg_off, torch.device("cpu")).terms(batch)[0]
    assert torch.isfinite(with_term).all()
    assert not torch.allclose(with_term, without_term, rtol=0, atol=1e-9)


def test_terms_sharing_forward_passes_equal_each_term_computed_on_its_own():
    """The modality and perceptual terms share one classifier pass of the generated images, the style-consistency
    term reuses the generator's style code: each term must still be what its own forward pass gives."""
    from brainspade.losses.modality import modality_dataset_loss
    from brainspade.losses.perceptual import ClassifierPerceptualLoss

    nets, batch, cfg = networks(), fake_batch(), settings()
    losses = GeneratorLosses(nets, cfg, torch.device("cpu"))
    torch.manual_seed(5)
    terms, fake = losses.terms(batch)
    assert torch.allclose(terms["perceptual"], ClassifierPerceptualLoss(nets.classifier)(fake, batch["image"]))
    modality_logits, dataset_logits = nets.classifier(fake)
    alone = modality_dataset_loss(modality_logits, dataset_logits, batch["style_modality"], batch["style_dataset"],
                                  cfg.weights.modality, cfg.weights.dataset)
    assert torch.allclose(terms["modality_dataset"], alone)
    torch.manual_seed(5)
    losses.forward_generator(batch)  # the same draws as before the style-consistency term
    own_codes = losses.style_consistency(nets.style_encoder, batch["style"], batch["style_modality"])
    assert torch.allclose(terms["style_consistency"], own_codes)


def test_dataset_term_moves_the_gradient_and_unknown_datasets_keep_only_the_modality_term():
    from brainspade.losses.modality import modality_dataset_loss

    logits = torch.randn(3, 2, requires_grad=True)
    modality = torch.tensor([0, 1, 0])
    only_modality = modality_dataset_loss(logits, logits, modality, torch.tensor([-1, -1, -1]), 0.75, 0.3)
    assert torch.allclose(only_modality, modality_dataset_loss(logits, logits, modality, modality, 0.75, 0.0))
    assert not torch.allclose(only_modality, modality_dataset_loss(logits, logits, modality, modality, 0.75, 0.3))


def test_style_consistency_loss_falls_on_a_fixed_batch():
    nets, batch = networks(), fake_batch()
    losses = GeneratorLosses(nets, settings(), torch.device("cpu"))
    optimizer = torch.optim.Adam(nets.style_encoder.parameters(), lr=1e-2)
    values = []
    for step in range(12):
        torch.manual_seed(step)  # a new random affine every step, on the same images
        loss = losses.style_consistency(nets.style_encoder, batch["style"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert sum(values[-3:]) / 3 < 0.5 * sum(values[:3]) / 3


def test_negatives_push_codes_of_other_modalities_apart():
    from brainspade.losses.style_consistency import StyleConsistencyLoss

    codes = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0]])
    loss = StyleConsistencyLoss(negative_weight=1.0)
    assert loss.negative_term(codes, torch.tensor([0, 1, 0])) > 0.9
    assert loss.negative_term(codes, torch.tensor([0, 0, 0])) == 0


@pytest.mark.parametrize(("alpha_mod", "alpha_dat"), [(0.3, 0.75), (0.5, 0.5), (0.0, 0.3)])
def test_alpha_mod_must_exceed_alpha_dat(alpha_mod, alpha_dat):
    with pytest.raises(BrainspadeError, match="modality=.* must exceed dataset="):
        settings_of("image_generator", weights={"modality": alpha_mod, "dataset": alpha_dat})


def test_both_alphas_zero_turn_the_modality_loss_off_and_training_needs_no_classifier():
    """The ablation without the modality / data-set loss trains without train-modisc's classifier; the paper's
    alphas need it."""
    off = settings(modality=0.0, dataset=0.0, perceptual=0.0)  # perceptual 0: its network is the classifier here
    assert not off.needs_classifier and settings(perceptual=0.0).needs_classifier
    nets = networks()
    nets.classifier = None
    terms, fake = GeneratorLosses(nets, off, torch.device("cpu")).terms(fake_batch())
    assert "modality_dataset" not in terms and fake.shape == (4, 1, *SIZE)
    assert all(torch.isfinite(value) for value in terms.values())


def test_generated_image_depends_only_on_its_seed_and_inputs_not_on_the_batch():
    nets = networks()
    model = ImageGenerator(nets.style_encoder, nets.generator, [f"c{i}" for i in range(CHANNELS)], SIZE,
                           torch.device("cpu"))
    batch = fake_batch()
    seeds = [11, 2**62 + 3, 7, 11]
    together = model.generate(batch["pv_map"], batch["style"], seeds)
    for i in range(4):
        alone = model.generate(batch["pv_map"][i : i + 1], batch["style"][i : i + 1], [seeds[i]])
        assert torch.allclose(alone, together[i : i + 1], atol=1e-5)
    again = model.generate(batch["pv_map"], batch["style"], seeds)
    assert torch.equal(again, together)
    other_seed = model.generate(batch["pv_map"][:1], batch["style"][:1], [12])
    assert not torch.allclose(other_seed, together[:1])  # the seed does draw the style noise


def test_resume_restores_step_weights_and_both_optimisers(tmp_path):
    nets, batch = networks(), fake_batch()
    losses = GeneratorLosses(nets, settings(), torch.device("cpu"))
    g_opt = torch.optim.Adam([*nets.style_encoder.parameters(), *nets.generator.parameters()], lr=1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(nets.discriminator.parameters(), lr=4e-4, betas=(0.0, 0.9))
    terms, _ = losses.terms(batch)
    losses.total(terms).backward()
    g_opt.step()
    models = {"style_encoder": nets.style_encoder, "generator": nets.generator, "discriminator": nets.discriminator}
    save_checkpoint(tmp_path / "checkpoint.pt", step=3, models=models, optimizers={"generator": g_opt,
                    "discriminator": d_opt}, signature={"channels": CHANNELS, "size": list(SIZE)})

    fresh = networks(seed=99)
    fresh_models = {"style_encoder": fresh.style_encoder, "generator": fresh.generator,
                    "discriminator": fresh.discriminator}
    fresh_g = torch.optim.Adam([*fresh.style_encoder.parameters(), *fresh.generator.parameters()], lr=1e-4)
    state = load_checkpoint(tmp_path / "checkpoint.pt", expected_signature={"channels": CHANNELS, "size": list(SIZE)})
    step = restore_training_state(state, models=fresh_models, optimizers={"generator": fresh_g})
    assert step == 3
    assert torch.equal(fresh.generator.fc.weight, nets.generator.fc.weight)
    assert torch.equal(fresh_g.state_dict()["state"][0]["exp_avg_sq"], g_opt.state_dict()["state"][0]["exp_avg_sq"])
    assert fresh_g.param_groups[0]["betas"] == (0.0, 0.9)
    with pytest.raises(BrainspadeError, match="size="):
        load_checkpoint(tmp_path / "checkpoint.pt", expected_signature={"size": [64, 64]})


def test_classifier_predict_gives_probabilities():
    network = ModalityDatasetClassifier(2, 3, init_features=8, growth_rate=4, block_config=(2, 2))
    classifier = ModalityClassifier(network, ["FLAIR", "T1"], ["a", "b", "c"], torch.device("cpu"))
    modality, dataset = classifier.predict(torch.randn(5, 1, *SIZE))
    assert modality.shape == (5, 2) and dataset.shape == (5, 3)
    assert torch.allclose(modality.sum(1), torch.ones(5)) and torch.allclose(dataset.sum(1), torch.ones(5))


@pytest.mark.parametrize("at_every_scale", [False, True])
def test_style_code_reaches_the_image_without_the_coarse_tensor_only_when_injected_at_every_scale(at_every_scale):
    torch.manual_seed(0)
    generator = SpadeGenerator(label_channels=3, z_dim=8, size=SIZE, channels=[16, 8], spade_hidden=8,
                               style_at_every_scale=at_every_scale).eval()
    with torch.no_grad():  # cut the paper's path (code -> coarse tensor): what remains is the every-scale path
        generator.fc.weight.zero_()
    pv = fake_batch(2)["pv_map"][:, :3]
    pv = pv / pv.sum(dim=1, keepdim=True)
    with torch.no_grad():
        a, b = generator(pv, torch.randn(2, 8)), generator(pv, torch.randn(2, 8))
    assert (not torch.allclose(a, b)) == at_every_scale


def test_style_code_keeps_the_intensity_statistics_that_normalised_features_lose():
    """Codes pool per-channel mean/std of the features; after a norm layer those are the same for every image
    (an encoder built that way collapsed to a constant code in training). Here a brighter copy gets another code."""
    from brainspade.models.style_encoder import StyleEncoder

    torch.manual_seed(0)
    encoder = StyleEncoder(z_dim=8, channels=[8, 16, 16])
    image = fake_batch(1)["image"]
    with torch.no_grad():
        codes, _ = encoder(torch.cat([image, 3 * image]))
    assert (codes[0] - codes[1]).norm() > 0.1 * codes[0].norm()


def test_mean_code_generator_is_deterministic_in_the_seed_and_sampled_one_is_not():
    nets = networks()
    batch = fake_batch(2)
    sampled = ImageGenerator(nets.style_encoder, nets.generator, ["a"] * CHANNELS, SIZE, torch.device("cpu"))
    mean = ImageGenerator(nets.style_encoder, nets.generator, ["a"] * CHANNELS, SIZE, torch.device("cpu"),
                          sampled_code=False)
    a, b = (sampled.generate(batch["pv_map"], batch["style"], seeds) for seeds in ([1, 2], [3, 4]))
    assert not torch.allclose(a, b)  # the sampled code draws from the posterior per seed
    c, d = (mean.generate(batch["pv_map"], batch["style"], seeds) for seeds in ([1, 2], [3, 4]))
    torch.testing.assert_close(c, d)  # the mean code: the style image alone decides


def test_generator_fed_the_classifier_modality_depends_on_it_and_is_saved_with_it(tmp_path):
    """style_modality_input: the classifier's modality of the style image reaches the image, and the
    checkpoint alone rebuilds the same generator (classifier included)."""
    torch.manual_seed(0)
    args = model_args()
    args["generator"] = {**args["generator"], "z_dim": 8 + 2, "style_at_every_scale": True}
    style_encoder, generator, discriminator = build_image_models(args)
    classifier_args = {"n_modalities": 2, "n_datasets": 2, "init_features": 8, "growth_rate": 4, "block_config": [2, 2]}
    classifier = ModalityDatasetClassifier(**classifier_args).eval()
    model = ImageGenerator(style_encoder, generator, ["a"] * CHANNELS, SIZE, torch.device("cpu"), sampled_code=False,
                           style_classifier=classifier)
    batch = fake_batch(2)
    images = model.generate(batch["pv_map"], batch["style"], [1, 2])

    with torch.no_grad():  # another modality verdict for the same style images: other images
        classifier.modality_head.bias.copy_(torch.tensor([20.0, -20.0]))
    assert not torch.allclose(model.generate(batch["pv_map"], batch["style"], [1, 2]), images)

    ema = {"style_encoder": style_encoder, "generator": generator}
    save_checkpoint(tmp_path / "checkpoint.pt", step=1, models={"discriminator": discriminator}, optimizers={},
                    ema_models=ema, signature=schema_signature(["a"] * CHANNELS, [], SIZE, args),
                    extra={"sampled_code": False, "style_modality_input": True,
                           "style_classifier": {"model_args": classifier_args, "weights": classifier.state_dict()}})
    loaded = ImageGenerator.from_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))
    torch.testing.assert_close(loaded.generate(batch["pv_map"], batch["style"], [1, 2]),
                               model.generate(batch["pv_map"], batch["style"], [1, 2]))


# ---------------------------------------------------------------- the style image's appearance as an input


def test_pair_augmentation_gives_both_slices_one_appearance():
    """The same random draw for target and style: identical inputs stay (up to noise) identical, and change."""
    from brainspade.generation.site_look.statistics import appearance_statistics
    from brainspade.training.appearance_augmentation import augment_pairs

    torch.manual_seed(0)
    image = disc_slice().repeat(4, 1, 1, 1)
    brain = (image > image.amin()).float()
    targets, styles = augment_pairs(image, image.clone(), brain, brain,
                                    settings_of("image_generator", appearance_augmentation={"probability": 1.0, "noise_std": [0.0, 0.0]}).appearance_augmentation)
    torch.testing.assert_close(targets, styles)  # without noise the pair is changed exactly alike
    assert (targets - image).abs().mean() > 0.05
    inside = brain.bool()
    assert targets[inside].mean().abs() < 1e-3 and (targets[inside].std() - 1).abs() < 1e-2  # z-scored again
    kept, _ = augment_pairs(image, image.clone(), brain, brain, augmentation(0.0))
    assert torch.equal(kept, image)
    noisy_t, noisy_s = augment_pairs(image, image.clone(), brain, brain, augmentation(1.0))
    assert (appearance_statistics(noisy_t) - appearance_statistics(noisy_s)).abs().max() < 0.5


def test_generator_output_follows_the_style_appearance_and_noise_and_is_rebuilt_from_its_checkpoint(tmp_path):
    """style_appearance_input + noise_input: a noisier style image gives another image; the noise is seeded
    per image; the checkpoint alone rebuilds the same generator."""
    from brainspade.generation.site_look.statistics import STATISTICS

    torch.manual_seed(0)
    args = model_args()
    args["generator"] = {**args["generator"], "z_dim": 8 + len(STATISTICS), "style_at_every_scale": True,
                         "noise_input": True, "size": [64, 64]}
    style_encoder, generator, discriminator = build_image_models(args)
    with torch.no_grad():
        generator.noise_scale.bias.fill_(0.5)  # zero at initialisation: give the noise a path for the test
    model = ImageGenerator(style_encoder, generator, ["a"] * CHANNELS, (64, 64), torch.device("cpu"),
                           sampled_code=False, appearance_input=True)
    pv = torch.nn.functional.interpolate(pv_maps(2), size=(64, 64))
    clean, noisy = disc_slice().repeat(2, 1, 1, 1), disc_slice(noise=0.3).repeat(2, 1, 1, 1)
    with torch.no_grad():  # the learnt code's share cut: what differs is the statistics
        generator.fc.weight[:, :8].zero_()
        for module in generator.modules():
            if isinstance(module, torch.nn.Conv2d) and module.in_channels == CHANNELS + 8 + len(STATISTICS):
                module.weight[:, CHANNELS : CHANNELS + 8].zero_()
    a = model.generate(pv, clean, [1, 2])
    assert not torch.allclose(model.generate(pv, noisy, [1, 2]), a, atol=1e-4)
    assert not torch.allclose(model.generate(pv, clean, [3, 4]), a, atol=1e-4)  # the seed draws the pixel noise
    torch.testing.assert_close(model.generate(pv[:1], clean[:1], [1]), a[:1])  # batch-independent

    ema = {"style_encoder": style_encoder, "generator": generator}
    save_checkpoint(tmp_path / "checkpoint.pt", step=1, models={"discriminator": discriminator}, optimizers={},
                    ema_models=ema, signature=schema_signature(["a"] * CHANNELS, [], (64, 64), args),
                    extra={"sampled_code": False, "style_appearance_input": list(STATISTICS)})
    loaded = ImageGenerator.from_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))
    assert loaded.appearance_input == list(STATISTICS)
    torch.testing.assert_close(loaded.generate(pv, clean, [1, 2]), a)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["extra"]["style_appearance_input"] = ["q50"]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(BrainspadeError, match="appearance statistics"):
        ImageGenerator.from_checkpoint(tmp_path / "other.pt", torch.device("cpu"))
