"""Training and evaluation of the SPADE VAE-GAN image generator (train-image-generator).

One step: encode a *style* slice (another slice of the target's own volume: same modality and
site, different content), generate the target from its PV maps and that style code, update the
generator side (encoder + SPADE generator) with the weighted loss terms, then the discriminator.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainspade.data.datasets import ImageSlices, style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import background_channel
from brainspade.engine import distributed
from brainspade.engine.checkpoint import schema_signature
from brainspade.engine.ema import make_ema, update_ema
from brainspade.engine.logging import colourise_labels, grey_to_rgb, log_image_columns
from brainspade.engine.runtime import Runtime
from brainspade.errors import BrainspadeError
from brainspade.evaluation.metrics import paired_fidelity
from brainspade.generation.images import ImageGenerator, ModalityClassifier, with_style_modality
from brainspade.generation.site_look.statistics import STATISTICS
from brainspade.losses.gan import feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss
from brainspade.losses.kl import kl_divergence
from brainspade.losses.modality import modality_dataset_loss
from brainspade.losses.perceptual import ClassifierPerceptualLoss, make_perceptual_loss
from brainspade.losses.style_consistency import StyleConsistencyLoss
from brainspade.models.multiscale_patchgan import MultiScalePatchGAN
from brainspade.models.spade_generator import SpadeGenerator
from brainspade.models.style_encoder import StyleEncoder
from brainspade.settings import ImageGeneratorSettings
from brainspade.training.loop import Checkpointer, Schedule, run_steps
from brainspade.training.models import build
from brainspade.training.modisc import collate

COMMAND = "train-image-generator"
LOSS_TERMS = ("adversarial", "feature_matching", "perceptual", "kl", "modality_dataset", "style_consistency",
              "reconstruction")


@dataclass
class Networks:
    style_encoder: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    classifier: nn.Module | None  # frozen


class GeneratorLosses:
    """The generator side's loss terms, each returned unweighted so tests and logs can see them apart."""

    def __init__(self, networks: Networks, settings: ImageGeneratorSettings, device: torch.device):
        self.networks = networks
        self.weights = dataclasses.asdict(settings.weights)
        self.sampled_code = settings.sampled_code
        self.style_modality_input = settings.style_modality_input
        self.style_appearance_input = settings.style_appearance_input
        self.noise_input = bool(settings.generator["noise_input"])
        self.perceptual = (make_perceptual_loss(settings.perceptual_network, networks.classifier).to(device)
                           if self.weights["perceptual"] > 0 else None)
        self.perceptual_on_classifier = isinstance(self.perceptual, ClassifierPerceptualLoss)
        affine = settings.style_affine
        self.style_consistency = StyleConsistencyLoss(
            rotate=affine.rotate, scale=affine.scale, translate=affine.translate,
            negative_weight=settings.style_negatives.weight, negative_margin=settings.style_negatives.margin,
        )

    def weighted(self, term: str) -> float:
        if term == "modality_dataset":
            return 1.0 if (self.weights["modality"] or self.weights["dataset"]) else 0.0
        return self.weights[term]

    def forward_generator(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.networks.style_encoder(batch["style"])
        # A sampled code (the paper's VAE) can drown a weak mean in noise early on, and the generator
        # then learns to ignore it (posterior collapse, benchmarks/image_generator.md); `sampled_code:
        # false` trains on the mean.
        code = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.sampled_code else mu
        code = with_style_modality(code, batch["style"], self.networks.classifier if self.style_modality_input else None,
                                   self.style_appearance_input)
        noise = torch.randn_like(batch["image"]) if self.noise_input else None  # no draw unless the generator takes it
        return self.networks.generator(batch["pv_map"], code, noise), mu, logvar

    def terms(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unweighted terms whose weight is non-zero, and the generated images."""
        fake, mu, logvar = self.forward_generator(batch)
        real, pv_maps, brain = batch["image"], batch["pv_map"], batch["brain"]
        terms: dict[str, torch.Tensor] = {}
        if self.weighted("adversarial") or self.weighted("feature_matching"):
            fake_scores, fake_features = self.networks.discriminator(torch.cat([pv_maps, fake], dim=1))
            with torch.no_grad():
                _, real_features = self.networks.discriminator(torch.cat([pv_maps, real], dim=1))
            terms["adversarial"] = hinge_generator_loss(fake_scores)
            terms["feature_matching"] = feature_matching_loss(fake_features, real_features)
        # The frozen classifier's modality term and the perceptual term (on its features) share one forward pass
        # of the generated images: a fifth of a CPU step (benchmarks/demo.md).
        classified = (self.networks.classifier.forward_with_features(fake)
                      if self.weighted("modality_dataset") else None)
        if self.perceptual_on_classifier:
            terms["perceptual"] = self.perceptual(fake, real, classified[2] if classified is not None else None)
        elif self.perceptual is not None:
            terms["perceptual"] = self.perceptual(fake, real)
        terms["kl"] = kl_divergence(mu, logvar)
        if classified is not None:
            modality_logits, dataset_logits, _ = classified
            terms["modality_dataset"] = modality_dataset_loss(
                modality_logits, dataset_logits, batch["style_modality"], batch["style_dataset"],
                self.weights["modality"], self.weights["dataset"])
        if self.weighted("style_consistency"):
            terms["style_consistency"] = self.style_consistency(
                self.networks.style_encoder, batch["style"], batch["style_modality"], codes=mu)
        if self.weighted("reconstruction"):
            terms["reconstruction"] = ((fake - real).abs() * brain).sum() / brain.sum().clamp_min(1)
        return {k: v for k, v in terms.items() if self.weighted(k)}, fake

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weighted(k) * v for k, v in terms.items())


class StylePairs:
    """Training batches: a target slice and, as its style, another slice of the same volume (subject, modality)."""

    def __init__(self, cache: SliceCache, indices: np.ndarray, modalities: list[str], datasets: list[str]):
        self.dataset = ImageSlices(cache, indices, modalities, datasets)
        self.background = background_channel(cache.channels)
        table = cache.image_table
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for position, index in enumerate(indices):
            groups[(str(table["subject"][index]), str(table["modality"][index]))].append(position)
        self.partners = []
        for position, index in enumerate(indices):
            group = groups[(str(table["subject"][index]), str(table["modality"][index]))]
            others = [p for p in group if p != position]
            self.partners.append(np.array(others or [position]))

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """A random batch drawn with torch's RNG (restored on resume)."""
        targets = torch.randint(len(self), (size,)).tolist()
        styles = [int(self.partners[t][torch.randint(len(self.partners[t]), ()).item()]) for t in targets]
        target = collate(self.dataset, np.array(targets), self.background)
        style = collate(self.dataset, np.array(styles), self.background)
        target.update(style=style["image"], style_brain=style["brain"], style_modality=style["modality"],
                      style_dataset=style["dataset"])
        return target


def model_arguments(settings: ImageGeneratorSettings, channels: list[str], size: tuple[int, int],
                    modalities: int = 0) -> dict[str, dict]:
    """Constructor arguments of the three networks: the config nodes plus what the data decides.

    `modalities` counts the classifier's modality outputs, fed to the generator next to the code
    when `style_modality_input` is on.
    """
    if settings.style_modality_input and modalities < 1:
        raise BrainspadeError("image_generator.style_modality_input=true needs a trained modality classifier (train-modisc)")
    style_encoder = dict(settings.style_encoder)
    generator_code = (style_encoder["z_dim"] + (modalities if settings.style_modality_input else 0)
                      + (len(STATISTICS) if settings.style_appearance_input else 0))
    return {
        "style_encoder": style_encoder,
        "generator": {**settings.generator, "label_channels": len(channels), "z_dim": generator_code,
                      "size": list(size)},
        "discriminator": {**settings.discriminator, "in_channels": len(channels) + 1},
    }


def train_image_generator(folder: Path, cache: SliceCache, train: np.ndarray, sources: list[str],
                          classifier: ModalityClassifier | None, settings: ImageGeneratorSettings,
                          runtime: Runtime, seed: int, config: dict) -> dict:
    """Train (resuming from folder's checkpoint), leave the final checkpoint in folder; the runtime summary.

    Under torchrun the generator side (style encoder, generator) and the discriminator are
    DDP-wrapped separately (two optimisers, two backward passes per step); the frozen
    classifier is not wrapped (it has no gradients to average).
    """
    device = runtime.device
    if len(train) == 0:
        raise BrainspadeError(f"{cache.folder}: no train-split images of the source data sets {sources}")
    modalities = classifier.modalities if classifier else sorted(set(cache.image_table["modality"][train].tolist()))
    datasets = classifier.datasets if classifier else sources
    pairs = StylePairs(cache, train, modalities, datasets)

    args = model_arguments(settings, cache.channels, cache.size, len(classifier.modalities) if classifier else 0)
    style_encoder = build(StyleEncoder, args["style_encoder"], "image_generator.style_encoder").to(device)
    generator = build(SpadeGenerator, args["generator"], "image_generator.generator").to(device)
    discriminator = build(MultiScalePatchGAN, args["discriminator"], "image_generator.discriminator").to(device)
    betas = tuple(settings.betas)
    # Two time-scale update rule (Heusel et al. 2017): the discriminator learns faster.
    generator_optimizer = torch.optim.Adam([*style_encoder.parameters(), *generator.parameters()],
                                           lr=settings.lr_generator, betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.lr_discriminator, betas=betas)
    ema = {"style_encoder": make_ema(style_encoder), "generator": make_ema(generator)}
    models = {"style_encoder": style_encoder, "generator": generator, "discriminator": discriminator}
    optimizers = {"generator": generator_optimizer, "discriminator": discriminator_optimizer}
    # A generator fed the classifier's modality needs that classifier to generate: it is saved with it.
    style_classifier = ({"style_classifier": {"model_args": classifier.model_args,
                                              "weights": classifier.network.state_dict()}}
                        if settings.style_modality_input else {})
    appearance = list(STATISTICS) if settings.style_appearance_input else []
    signature = {**schema_signature(cache.channels, cache.lesion_channels, cache.size, args),
                 "sampled_code": settings.sampled_code, "style_modality_input": settings.style_modality_input,
                 "style_appearance_input": appearance}
    checkpointer = Checkpointer(
        folder, signature, models, optimizers, ema, config=config,
        extra={"modalities": modalities, "datasets": datasets, "sampled_code": settings.sampled_code,
               "style_modality_input": settings.style_modality_input, "style_appearance_input": appearance,
               **style_classifier})
    trained = {name: runtime.prepare(model) for name, model in models.items()}
    networks = Networks(trained["style_encoder"], trained["generator"], trained["discriminator"],
                        classifier.network if classifier else None)
    losses = GeneratorLosses(networks, settings, device)
    batch_size = distributed.local_batch_size(settings.batch_size, "image_generator.batch_size")
    adversarial = bool(losses.weighted("adversarial") or losses.weighted("feature_matching"))
    augmentation = settings.appearance_augmentation
    if augmentation.probability > 0:
        # Imported only when on: TorchIO pulls pandas and more into every run that does not use it.
        from brainspade.training.appearance_augmentation import augment_pairs
    shown: dict[str, torch.Tensor] = {}

    def train_step(step: int) -> dict[str, float]:
        batch = pairs.batch(batch_size)
        if augmentation.probability > 0:
            batch["image"], batch["style"] = augment_pairs(batch["image"], batch["style"], batch["brain"],
                                                           batch["style_brain"], augmentation)
        batch = {k: runtime.inputs(v) for k, v in batch.items()}
        with runtime.autocast():
            terms, fake = losses.terms(batch)
            terms = {k: v.float() for k, v in terms.items()}
            total = losses.total(terms)
        generator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        generator_optimizer.step()
        discriminator_loss = torch.zeros(())
        if adversarial:
            with runtime.autocast():
                real_scores, _ = trained["discriminator"](torch.cat([batch["pv_map"], batch["image"]], dim=1))
                fake_scores, _ = trained["discriminator"](torch.cat([batch["pv_map"], fake.detach()], dim=1))
                discriminator_loss = hinge_discriminator_loss(real_scores, fake_scores).float()
            discriminator_optimizer.zero_grad(set_to_none=True)
            discriminator_loss.backward()
            discriminator_optimizer.step()
        for name, average in ema.items():
            update_ema(average, models[name], settings.ema_decay)
        shown.update(pv_map=batch["pv_map"][:4], style=batch["style"][:4], fake=fake[:4].detach(),
                     image=batch["image"][:4])
        return {**{f"generator/{k}": v.item() for k, v in terms.items()},
                "discriminator/hinge": discriminator_loss.item()}

    def log_images(writer, step: int) -> None:
        columns = [colourise_labels(shown["pv_map"]), grey_to_rgb(shown["style"]), grey_to_rgb(shown["fake"]),
                   grey_to_rgb(shown["image"])]
        log_image_columns(writer, "label | style image | generated | real", columns, step)

    schedule = Schedule(settings.steps, settings.log_every, settings.checkpoint_every, settings.image_every)
    timer = run_steps(COMMAND, checkpointer, schedule, seed, device, train_step, log_images)
    return runtime.summary(models, timer, COMMAND)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_image_generator(model: ImageGenerator, classifier: ModalityClassifier | None, cache: SliceCache,
                             source: list[str], max_images: int, batch_size: int, seed: int) -> dict:
    """Paired fidelity on held-out volumes, and style transfer judged by the classifier.

    Paired: every sampled test-split slice of the source data sets is generated from its own PV
    map with another slice of its own volume as style, and compared with the real slice (SSIM
    over the slice, PSNR and MAE inside the brain). Style transfer: the same PV maps, styled
    with train-split slices of every (data set, modality); the share the classifier assigns to
    the style's modality (and data set, for the source data sets).
    """
    rng = np.random.default_rng(seed)
    test = cache.image_indices(split="test", datasets=source)
    if len(test) == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {source} have no test-split images to evaluate on")
    test = np.sort(rng.choice(test, size=min(max_images, len(test)), replace=False))
    modalities = classifier.modalities if classifier else sorted(set(cache.image_table["modality"].tolist()))
    pairs = StylePairs(cache, cache.image_indices(split="test", datasets=source), modalities, source)
    position_of = {int(i): p for p, i in enumerate(pairs.dataset.indices)}
    background = pairs.background
    paired = {"ssim": [], "psnr": [], "mae_brain": []}
    pv_batches = []
    for start in range(0, len(test), batch_size):
        positions = [position_of[int(i)] for i in test[start : start + batch_size]]
        styles = [int(pairs.partners[p][rng.integers(len(pairs.partners[p]))]) for p in positions]
        target = collate(pairs.dataset, np.array(positions), background)
        style = collate(pairs.dataset, np.array(styles), background)
        seeds = [seed + int(i) for i in test[start : start + batch_size]]
        fake = model.generate(target["pv_map"], style["image"], seeds).cpu()
        for name, values in paired_fidelity(fake, target["image"], target["brain"]).items():
            paired[name] += values.tolist()
        pv_batches.append(target["pv_map"])
    metrics: dict = {"paired": {k: float(np.mean(v)) for k, v in paired.items()}}
    metrics["paired"]["n"] = len(test)
    if classifier is None:
        return metrics
    pv_maps = torch.cat(pv_batches)
    transfer = {}
    for dataset in sorted(set(cache.image_table["dataset"].tolist())):
        for modality in sorted(set(cache.image_table["modality"][cache.image_indices(datasets=[dataset])].tolist())):
            candidates = style_image_indices(cache, dataset, modality)
            if len(candidates) == 0:
                continue
            chosen = rng.choice(candidates, size=len(pv_maps), replace=len(candidates) < len(pv_maps))
            style_images = torch.stack([torch.from_numpy(cache.image(int(i)))[None] for i in chosen])
            hits_mod, hits_dat = 0, 0
            for start in range(0, len(pv_maps), batch_size):
                stop = start + batch_size
                seeds = [seed + 7919 * (k + 1) for k in range(start, min(stop, len(pv_maps)))]
                fake = model.generate(pv_maps[start:stop], style_images[start:stop], seeds)
                modality_probs, dataset_probs = classifier.predict(fake)
                if modality in classifier.modalities:
                    hits_mod += int((modality_probs.argmax(1) == classifier.modalities.index(modality)).sum())
                if dataset in classifier.datasets:
                    hits_dat += int((dataset_probs.argmax(1) == classifier.datasets.index(dataset)).sum())
            entry = {"n": len(pv_maps), "modality_match": hits_mod / len(pv_maps)}
            if dataset in classifier.datasets:
                entry["dataset_match"] = hits_dat / len(pv_maps)
            transfer[f"{dataset}/{modality}"] = entry
    metrics["style_transfer"] = transfer
    return metrics
