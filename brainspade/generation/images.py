"""The trained image-side models as a plain API: `ImageGenerator.generate` and `ModalityClassifier.predict`.

The `sample` stage calls these; both rebuild their networks from the checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from brainspade.engine.checkpoint import build_model, load_checkpoint
from brainspade.engine.runtime import bf16_autocast
from brainspade.engine.stage import load_stage_checkpoint
from brainspade.errors import BrainspadeError
from brainspade.generation.site_look.statistics import STATISTICS, appearance_statistics
from brainspade.models.modality_classifier import ModalityDatasetClassifier
from brainspade.models.spade_generator import SpadeGenerator
from brainspade.models.style_encoder import StyleEncoder


def sample_style_codes(mu: torch.Tensor, logvar: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """z = mu + sigma * eps with eps of sample i drawn from a generator seeded with seeds[i] (batch-independent)."""
    noise = torch.stack([
        torch.randn(mu.shape[1], generator=torch.Generator().manual_seed(int(seed) % 2**63)) for seed in seeds
    ]).to(mu)
    return mu + torch.exp(0.5 * logvar) * noise


def seeded_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Per-pixel N(0, 1) noise (B, *shape), image i drawn from a generator seeded with seeds[i] (batch-independent)."""
    return torch.stack([
        torch.randn(*shape, generator=torch.Generator().manual_seed((int(seed) * 1000003 + 17) % 2**63))
        for seed in seeds
    ])


def with_style_modality(codes: torch.Tensor, style_images: torch.Tensor, classifier: nn.Module | None,
                        appearance: bool = False) -> torch.Tensor:
    """The style codes, then the frozen classifier's modality probabilities for the style images if given,
    then the style images' appearance statistics if `appearance`."""
    parts = [codes]
    if classifier is not None:
        modality_logits, _ = classifier(style_images)
        parts.append(modality_logits.softmax(dim=1).to(codes))
    if appearance:
        parts.append(appearance_statistics(style_images).to(codes))
    return torch.cat(parts, dim=1)


class ImageGenerator:
    """The EMA SPADE generator and style encoder of a finished `train-image-generator` folder.

    `bf16`: the networks run under bf16 autocast; style codes are drawn and images returned in fp32.
    """

    def __init__(self, style_encoder: StyleEncoder, generator: SpadeGenerator, channels: list[str],
                 size: tuple[int, int], device: torch.device, sampled_code: bool = True,
                 style_classifier: nn.Module | None = None, modality_input: Sequence[str] = (),
                 appearance_input: bool = False, bf16: bool = False):
        self.sampled_code = sampled_code  # False: the code is the encoder mean, as it was in training
        self.style_encoder = style_encoder.to(device).eval().requires_grad_(False)
        self.generator = generator.to(device).eval().requires_grad_(False)
        # Set when the generator was trained with the classifier's modality of the style image next to the code.
        self.style_classifier = (style_classifier.to(device).eval().requires_grad_(False)
                                 if style_classifier is not None else None)
        # The modalities that classifier tells apart: the only ones the generator's modality input can carry.
        self.modality_input = list(modality_input) if style_classifier is not None else []
        # The style image's appearance statistics (site_look/statistics.py) are part of the generator's input.
        self.appearance_input = list(STATISTICS) if appearance_input else []
        self.channels = list(channels)
        self.size = tuple(size)
        self.device = device
        self.bf16 = bf16

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device, channels: Sequence[str] | None = None,
                    bf16: bool = False) -> ImageGenerator:
        """The generator of a finished stage folder; with `channels`, one made for other channels is refused."""
        state = load_stage_checkpoint(folder, "image generator", "train-image-generator", channels=channels)
        return cls._from_state(state, device, bf16)

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> ImageGenerator:
        """The EMA networks of a checkpoint (also of an unfinished training, for its evaluation)."""
        return cls._from_state(load_checkpoint(path), device)

    @classmethod
    def _from_state(cls, state: dict, device: torch.device, bf16: bool = False) -> ImageGenerator:
        extra = state["extra"]
        style_classifier = None
        appearance = extra.get("style_appearance_input", [])
        if appearance and list(appearance) != list(STATISTICS):
            raise BrainspadeError(f"the generator was trained on the appearance statistics {appearance}; this version "
                             f"computes {list(STATISTICS)}: retrain it (train-image-generator)")
        if extra.get("style_modality_input", False):
            saved = extra["style_classifier"]
            style_classifier = ModalityDatasetClassifier(**saved["model_args"])
            style_classifier.load_state_dict(saved["weights"])
        return cls(build_model(state, "style_encoder", StyleEncoder, ema=True),
                   build_model(state, "generator", SpadeGenerator, ema=True), state["signature"]["channels"],
                   tuple(state["signature"]["size"]), device, bool(extra.get("sampled_code", True)), style_classifier,
                   extra.get("modalities", ()), bool(appearance), bf16)

    @torch.no_grad()
    def generate(self, pv_maps: torch.Tensor, style_images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """PV maps (B, C, H, W) + z-scored style slices (B, 1, H, W) -> images (B, 1, H, W) on the z-score scale.

        Image i depends only on (seeds[i], pv_maps[i], style_images[i]) and the weights.
        """
        if len(seeds) != len(pv_maps) or len(style_images) != len(pv_maps):
            raise ValueError(f"{len(pv_maps)} PV maps, {len(style_images)} style images and {len(seeds)} seeds")
        pv_maps = pv_maps.to(self.device, torch.float32)
        style_images = style_images.to(self.device, torch.float32)
        with bf16_autocast(self.device, self.bf16):
            mu, logvar = (part.float() for part in self.style_encoder(style_images))
            codes = sample_style_codes(mu, logvar, seeds) if self.sampled_code else mu
            codes = with_style_modality(codes, style_images, self.style_classifier, bool(self.appearance_input))
            noise = None
            if getattr(self.generator, "noise_scale", None) is not None:
                noise = seeded_noise(seeds, (1, *pv_maps.shape[-2:])).to(self.device)
            return self.generator(pv_maps, codes, noise).float()


class ModalityClassifier:
    """The frozen modality / data-set classifier of a finished `train-modisc` folder (`bf16`: under bf16 autocast)."""

    def __init__(self, network: ModalityDatasetClassifier, modalities: list[str], datasets: list[str],
                 device: torch.device, model_args: dict | None = None, bf16: bool = False):
        self.network = network.to(device).eval().requires_grad_(False)
        self.model_args = model_args  # to rebuild the network (the image generator saves a copy when it uses it)
        self.modalities = list(modalities)
        self.datasets = list(datasets)
        self.device = device
        self.bf16 = bf16

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device, channels: Sequence[str] | None = None,
                    bf16: bool = False) -> ModalityClassifier:
        """The classifier of a finished `train-modisc` folder; with `channels`, one of another schema is refused."""
        state = load_stage_checkpoint(folder, "modality classifier", "train-modisc", channels=channels)
        return cls(build_model(state, "classifier", ModalityDatasetClassifier), state["extra"]["modalities"],
                   state["extra"]["datasets"], device, state["signature"]["model_args"]["classifier"], bf16)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, H, W) -> (B, n_modalities) and (B, n_datasets) class probabilities."""
        with bf16_autocast(self.device, self.bf16):
            modality_logits, dataset_logits = self.network(images.to(self.device, torch.float32))
        return modality_logits.float().softmax(dim=1), dataset_logits.float().softmax(dim=1)
