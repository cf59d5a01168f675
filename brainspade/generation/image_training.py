"""Training and evaluation of the SPADE VAE-GAN image generator (train-image-generator).

One step: encode a *style* slice (another slice of the target's own volume: same modality and
site, different content), generate the target from its PV maps and that style code, update the
generator side (encoder + SPADE generator) with the weighted loss terms, then the discriminator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from brainspade.data.datasets import ImageSlices, generator_image_indices, style_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import background_channel
from brainspade.engine import distributed
from brainspade.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from brainspade.engine.ema import make_ema, update_ema
from brainspade.engine.logging import (
    colourise_labels,
    grey_to_rgb,
    log_image_columns,
    progress,
    tensorboard_writer,
)
from brainspade.engine.runtime import Runtime, StepTimer
from brainspade.errors import BrainspadeError
from brainspade.generation.images import (
    ImageGenerator,
    ModalityClassifier,
    build_image_models,
    with_style_modality,
)
from brainspade.generation.modisc_training import collate
from brainspade.losses.gan import feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss
from brainspade.losses.kl import kl_divergence
from brainspade.losses.modality import modality_dataset_loss
from brainspade.losses.perceptual import make_perceptual_loss
from brainspade.losses.style_consistency import StyleConsistencyLoss

LOSS_TERMS = ("adversarial", "feature_matching", "perceptual", "kl", "modality_dataset", "style_consistency",
              "reconstruction")


def validate_weights(weights: Mapping[str, float]) -> None:
    """alpha_mod > alpha_dat (METHOD.md), unless the modality/data-set loss is off (both 0)."""
    alpha_mod, alpha_dat = float(weights["modality"]), float(weights["dataset"])
    if (alpha_mod or alpha_dat) and not alpha_mod > alpha_dat:
        raise BrainspadeError(
            f"image_generator.weights: modality={alpha_mod} must exceed dataset={alpha_dat} "
            "(the paper uses 0.75 > 0.3); set both to 0 to switch the loss off"
        )
    negative = [k for k, v in weights.items() if float(v) < 0]
    if negative:
        raise BrainspadeError(f"image_generator.weights.{negative[0]} is negative; weights are >= 0 (0 disables a term)")


def needs_classifier(settings: DictConfig) -> bool:
    weights = settings.weights
    return bool(float(weights.modality) or float(weights.dataset) or settings.style_modality_input) or (
        float(weights.perceptual) > 0 and str(settings.perceptual_network) == "classifier")


@dataclass
class Networks:
    style_encoder: nn.Module
    generator: nn.Module
    discriminator: nn.Module
    classifier: nn.Module | None  # frozen


class GeneratorLosses:
    """The generator side's loss terms, each returned unweighted so tests and logs can see them apart."""

    def __init__(self, networks: Networks, settings: DictConfig, device: torch.device):
        self.networks = networks
        self.weights = {k: float(v) for k, v in settings.weights.items()}
        self.sampled_code = bool(settings.sampled_code)
        self.style_modality_input = bool(settings.style_modality_input)
        self.perceptual = (make_perceptual_loss(str(settings.perceptual_network), networks.classifier).to(device)
                           if self.weights["perceptual"] > 0 else None)
        affine = settings.style_affine
        self.style_consistency = StyleConsistencyLoss(
            rotate=float(affine.rotate), scale=float(affine.scale), translate=float(affine.translate),
            negative_weight=float(settings.style_negatives.weight), negative_margin=float(settings.style_negatives.margin),
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
        code = with_style_modality(code, batch["style"], self.networks.classifier if self.style_modality_input else None)
        return self.networks.generator(batch["pv_map"], code), mu, logvar

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
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(fake, real)
        terms["kl"] = kl_divergence(mu, logvar)
        if self.weighted("modality_dataset"):
            modality_logits, dataset_logits = self.networks.classifier(fake)
            terms["modality_dataset"] = modality_dataset_loss(
                modality_logits, dataset_logits, batch["style_modality"], batch["style_dataset"],
                self.weights["modality"], self.weights["dataset"])
        if self.weighted("style_consistency"):
            terms["style_consistency"] = self.style_consistency(
                self.networks.style_encoder, batch["style"], batch["style_modality"])
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
        target.update(style=style["image"], style_modality=style["modality"], style_dataset=style["dataset"])
        return target


def model_arguments(settings: DictConfig, channels: list[str], size: tuple[int, int], modalities: int = 0) -> dict:
    """Constructor arguments of the three networks; `modalities` counts the classifier's modality outputs."""
    style_modality_input = bool(settings.style_modality_input)
    if style_modality_input and modalities < 1:
        raise BrainspadeError("image_generator.style_modality_input=true needs a trained modality classifier (train-modisc)")
    generator_code = int(settings.z_dim) + (modalities if style_modality_input else 0)
    return {
        "sampled_code": bool(settings.sampled_code),
        "style_modality_input": style_modality_input,
        "style_encoder": {"z_dim": int(settings.z_dim), "channels": [int(c) for c in settings.encoder_channels]},
        "generator": {
            "label_channels": len(channels), "z_dim": generator_code, "size": list(size),
            "channels": [int(c) for c in settings.generator_channels], "spade_hidden": int(settings.spade_hidden),
            "style_at_every_scale": bool(settings.style_at_every_scale),
        },
        "discriminator": {
            "in_channels": len(channels) + 1, "num_scales": int(settings.discriminator_scales),
            "num_layers": int(settings.discriminator_layers), "channels": int(settings.discriminator_channels),
        },
    }


def train_image_generator(cfg: DictConfig, cache: SliceCache, folder: Path, classifier_folder: Path | None,
                          runtime: Runtime) -> dict:
    """Train (resuming from folder's checkpoint), leave the final checkpoint in folder; the runtime summary.

    Under torchrun the generator side (style encoder, generator) and the discriminator are
    DDP-wrapped separately (two optimisers, two backward passes per step); the frozen
    classifier is not wrapped (it has no gradients to average).
    """
    settings = cfg.image_generator
    device = runtime.device
    validate_weights(settings.weights)
    source = list(cfg.data.source_datasets)
    train = generator_image_indices(cache, source)
    if len(train) == 0:
        raise BrainspadeError(f"{cache.folder}: no train-split images of the source data sets {source}")
    classifier = ModalityClassifier.load(classifier_folder, device) if classifier_folder is not None else None
    modalities = classifier.modalities if classifier else sorted(set(cache.image_table["modality"][train].tolist()))
    datasets = classifier.datasets if classifier else source
    pairs = StylePairs(cache, train, modalities, datasets)

    args = model_arguments(settings, cache.channels, cache.size, len(classifier.modalities) if classifier else 0)
    style_encoder, generator, discriminator = (m.to(device) for m in build_image_models(args))
    betas = tuple(float(b) for b in settings.betas)
    # Two time-scale update rule (Heusel et al. 2017): the discriminator learns faster.
    generator_optimizer = torch.optim.Adam([*style_encoder.parameters(), *generator.parameters()],
                                           lr=float(settings.lr_generator), betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=float(settings.lr_discriminator),
                                               betas=betas)
    ema = {"style_encoder": make_ema(style_encoder), "generator": make_ema(generator)}
    models = {"style_encoder": style_encoder, "generator": generator, "discriminator": discriminator}
    optimizers = {"generator": generator_optimizer, "discriminator": discriminator_optimizer}
    signature = {"channels": cache.channels, "size": list(cache.size), "model_args": args}
    checkpoint = folder / CHECKPOINT_NAME
    start = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, expected_signature=signature)
        start = restore_training_state(state, models=models, optimizers=optimizers, ema_models=ema)
        if distributed.is_main():
            print(f"[train-image-generator] resuming at step {start}")
    trained = {name: runtime.prepare(model) for name, model in models.items()}
    networks = Networks(trained["style_encoder"], trained["generator"], trained["discriminator"],
                        classifier.network if classifier else None)
    losses = GeneratorLosses(networks, settings, device)
    # A generator fed the classifier's modality needs that classifier to generate: it is saved with it.
    style_classifier = ({"style_classifier": {"model_args": classifier.model_args,
                                              "weights": classifier.network.state_dict()}}
                        if args["style_modality_input"] else {})

    def save(at: int) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(checkpoint, step=at, models=models, optimizers=optimizers, ema_models=ema,
                        signature=signature, config=OmegaConf.to_container(cfg, resolve=True),
                        extra={"model_args": args, "modalities": modalities, "datasets": datasets, **style_classifier})

    writer = tensorboard_writer(folder)
    steps = int(settings.steps)
    batch_size = distributed.local_batch_size(int(settings.batch_size), "image_generator.batch_size")
    timer = StepTimer(device)
    for step in progress(range(start, steps), initial=start, total=steps, desc="train-image-generator"):
        distributed.seed_step(int(cfg.seed), step)
        batch = {k: runtime.inputs(v) for k, v in pairs.batch(batch_size).items()}
        with runtime.autocast():
            terms, fake = losses.terms(batch)
            terms = {k: v.float() for k, v in terms.items()}
            total = losses.total(terms)
        generator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        generator_optimizer.step()

        discriminator_loss = torch.zeros(())
        if losses.weighted("adversarial") or losses.weighted("feature_matching"):
            with runtime.autocast():
                real_scores, _ = trained["discriminator"](torch.cat([batch["pv_map"], batch["image"]], dim=1))
                fake_scores, _ = trained["discriminator"](torch.cat([batch["pv_map"], fake.detach()], dim=1))
                discriminator_loss = hinge_discriminator_loss(real_scores, fake_scores).float()
            discriminator_optimizer.zero_grad(set_to_none=True)
            discriminator_loss.backward()
            discriminator_optimizer.step()
        for name, average in ema.items():
            update_ema(average, models[name], float(settings.ema_decay))

        done = step + 1
        if done % int(settings.log_every) == 0:
            logged = distributed.mean_over_ranks({**{f"generator/{k}": v.item() for k, v in terms.items()},
                                                  "discriminator/hinge": discriminator_loss.item()})
            if writer is not None:
                for name, value in logged.items():
                    writer.add_scalar(name, value, done)
        if writer is not None and (done % int(settings.image_every) == 0 or done == steps):
            columns = [colourise_labels(batch["pv_map"]), grey_to_rgb(batch["style"]), grey_to_rgb(fake),
                       grey_to_rgb(batch["image"])]
            log_image_columns(writer, "label | style image | generated | real", [c[:4] for c in columns], done)
        if done % int(settings.checkpoint_every) == 0 and done < steps:
            save(done)
        timer.tick()
    save(steps)
    if writer is not None:
        writer.close()
    return runtime.summary(models, timer, "train-image-generator")


# ---------------------------------------------------------------- evaluation


def ssim(images: torch.Tensor, references: torch.Tensor, data_range: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) for (B, 1, H, W) batches."""
    coords = torch.arange(11, dtype=torch.float32) - 5
    gauss = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2)[None, None].to(images)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=5)

    c1 = (0.01 * data_range.view(-1, 1, 1, 1)) ** 2
    c2 = (0.03 * data_range.view(-1, 1, 1, 1)) ** 2
    mu_x, mu_y = blur(images), blur(references)
    sigma_x = blur(images * images) - mu_x**2
    sigma_y = blur(references * references) - mu_y**2
    sigma_xy = blur(images * references) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return value.mean(dim=(1, 2, 3))


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
        real, brain = target["image"], target["brain"]
        data_range = (real.amax(dim=(1, 2, 3)) - real.amin(dim=(1, 2, 3))).clamp_min(1e-6)
        mse = ((fake - real) ** 2 * brain).sum(dim=(1, 2, 3)) / brain.sum(dim=(1, 2, 3)).clamp_min(1)
        paired["ssim"] += ssim(fake, real, data_range).tolist()
        paired["psnr"] += (10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))).tolist()
        paired["mae_brain"] += (((fake - real).abs() * brain).sum(dim=(1, 2, 3))
                                / brain.sum(dim=(1, 2, 3)).clamp_min(1)).tolist()
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
