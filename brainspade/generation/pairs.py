"""Synthetic (image, label) pairs: conditions -> label LDM -> PV maps -> SPADE with a style image.

Every random choice for sample `i` is drawn from seeds derived from (seed, i, purpose), so a
sample depends only on its id, the seed, the models and the config: not on the batch it was
made in, the shard that made it, or whether the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from brainspade.engine.seeding import derived_seed
from brainspade.errors import BrainspadeError
from brainspade.generation.labels import (
    APPEARANCE_NOISE,
    CONDITION,
    IMAGE_NOISE,
    STYLE_CHOICE,
    LabelSampler,
    sample_label_maps,
)
from brainspade.generation.site_look import SiteLook
from brainspade.generation.styles import StyleBank
from brainspade.settings import LabelSamplingSettings


@dataclass
class PairBatch:
    """One batch of synthetic pairs, in the order of `ids`."""

    ids: list[int]
    pv_maps: torch.Tensor  # (B, C, H, W)
    images: torch.Tensor  # (B, 1, H, W)
    records: list[dict]



def check_style_modality(modality: str, filter_modalities: Sequence[str] | None,
                         generator_modalities: Sequence[str], appearance_input: Sequence[str] = ()) -> str | None:
    """Refuse a style modality the modality filter can never accept; warn where the generator cannot condition on it.

    Returns the warning (None when the modality is fully supported). Raises BrainspadeError with the filter on
    and a modality it does not know: every image would be rejected, every retry spent, for nothing.
    """
    if filter_modalities is not None and modality not in filter_modalities:
        raise BrainspadeError(
            f"style.modality={modality}: the modality classifier knows only {list(filter_modalities)}, so the "
            f"modality filter would reject every image; set sampling.modality_filter=false to sample anyway, or "
            f"train-modisc on data that has {modality} images"
        )
    if generator_modalities and modality not in generator_modalities:
        appearance = (f"; it also takes the style image's appearance statistics ({', '.join(appearance_input)}), "
                      "measured from any image, but learnt only on the appearances of its training modalities"
                      if appearance_input else "")
        return (f"style.modality={modality} is not one of the modalities the generator conditions on "
                f"{list(generator_modalities)}: it takes the style image's code, and its modality input will carry "
                f"the classifier's {'/'.join(generator_modalities)} verdict for these {modality} images{appearance}")
    return None


class PairSynthesiser:
    """Makes synthetic pairs for given sample ids.

    Args:
        label_sampler: `LabelSampler` (label VAE + LDM).
        image_generator: `ImageGenerator` (SPADE).
        style_bank: where style slices come from.
        draw_conditions: maps per-sample seeds to conditions (B, L+1) for the label LDM.
        seed: the run's seed.
        label_settings: how the label LDM samples (sampler, steps, eta, guidance, background threshold).
        classifier: `ModalityClassifier` used as the modality filter, or None to accept every image.
        max_retries: how often a rejected image is regenerated with another style image.
        known_label_maps: returns the PV maps of given ids when another run already sampled them
            with the same label settings (only the style differs), else None.
        site_look: the style site's fitted look, put on each accepted image (or None).
    """

    def __init__(
        self,
        *,
        label_sampler: LabelSampler,
        image_generator,
        style_bank: StyleBank,
        draw_conditions: Callable[[Sequence[int]], torch.Tensor],
        seed: int,
        label_settings: LabelSamplingSettings,
        classifier=None,
        max_retries: int = 3,
        device: torch.device | None = None,
        known_label_maps: Callable[[Sequence[int]], torch.Tensor | None] | None = None,
        site_look: SiteLook | None = None,
    ):
        self.label_sampler = label_sampler
        self.image_generator = image_generator
        self.style_bank = style_bank
        self.draw_conditions = draw_conditions
        self.seed = seed
        self.label_settings = label_settings
        self.classifier = classifier
        self.max_retries = max_retries
        self.device = device or torch.device("cpu")
        self.known_label_maps = known_label_maps
        self.site_look = site_look
        self.expected_modality = self._filter_modality_index()

    def _filter_modality_index(self) -> int | None:
        if self.classifier is None or self.style_bank.modality not in self.classifier.modalities:
            return None
        return self.classifier.modalities.index(self.style_bank.modality)

    @torch.no_grad()
    def make(self, ids: Sequence[int]) -> PairBatch:
        ids = list(ids)
        pv_maps = self.known_label_maps(ids) if self.known_label_maps else None
        if pv_maps is None:
            conditions, pv_maps = sample_label_maps(self.label_sampler, ids, self.seed, self.draw_conditions,
                                                    self.label_settings)
        else:
            conditions = self.draw_conditions([derived_seed(self.seed, i, CONDITION) for i in ids])
        # The stored precision (float16): images made from maps sampled here and from maps read
        # back from another run are then the same.
        pv_maps = pv_maps.to(self.device).half().float()
        retries = [0] * len(ids)
        styles = [self._style_for(i, 0) for i in ids]
        images = self._generate(pv_maps, ids, styles, [0] * len(ids))
        predicted = self._predict(images)
        for attempt in range(1, self.max_retries + 1):
            rejected = [k for k, p in enumerate(predicted) if p is not None and p != self.expected_modality]
            if not rejected:
                break
            # Regenerate only the rejected samples, each with a new style image of its own.
            for k in rejected:
                styles[k] = self._style_for(ids[k], attempt)
                retries[k] = attempt
            redo = self._generate(pv_maps[rejected], [ids[k] for k in rejected], [styles[k] for k in rejected],
                                  [attempt] * len(rejected))
            images[rejected] = redo
            for k, p in zip(rejected, self._predict(redo), strict=True):
                predicted[k] = p
        # After the filter: it checks the modality the generator made for the style, which the site's look cannot
        # change, with a classifier that knows only source sites (it called most target-site FLAIR renders T1).
        images = self._put_site_look(images, pv_maps, ids, retries)
        records = [
            self._record(i, conditions[k], styles[k], predicted[k], retries[k]) for k, i in enumerate(ids)
        ]
        return PairBatch(ids=ids, pv_maps=pv_maps.cpu(), images=images.cpu(), records=records)

    def _style_for(self, sample_id: int, attempt: int) -> int:
        return self.style_bank.draw(np.random.default_rng(derived_seed(self.seed, sample_id, STYLE_CHOICE, attempt)))

    def _generate(self, pv_maps: torch.Tensor, ids: list[int], styles: list[int], attempts: list[int]) -> torch.Tensor:
        style_images = torch.stack([torch.from_numpy(self.style_bank.image(s))[None] for s in styles]).to(self.device)
        seeds = [derived_seed(self.seed, i, IMAGE_NOISE, a) for i, a in zip(ids, attempts, strict=True)]
        return self.image_generator.generate(pv_maps, style_images, seeds)

    def _put_site_look(self, images: torch.Tensor, pv_maps: torch.Tensor, ids: list[int], attempts: list[int]
                       ) -> torch.Tensor:
        """The site look on the accepted images, its noise seeded per (sample, attempt)."""
        if self.site_look is None:
            return images
        noise_seeds = [derived_seed(self.seed, i, APPEARANCE_NOISE, a) for i, a in zip(ids, attempts, strict=True)]
        moved = self.site_look.apply(images.cpu().numpy(), noise_seeds, pv_maps.cpu().numpy())
        return torch.from_numpy(moved).to(images.device)

    def _predict(self, images: torch.Tensor) -> list[int | None]:
        if self.classifier is None:
            return [None] * len(images)
        modality_probs, _ = self.classifier.predict(images)
        return modality_probs.argmax(dim=1).tolist()

    def _record(self, sample_id: int, condition: torch.Tensor, style: int, predicted: int | None, retries: int) -> dict:
        lesion_names = self.label_sampler.lesion_channels
        values = condition.tolist()
        record = {"id": sample_id, "seed": self.seed}
        record.update({f"lesion_{name}": round(v, 6) for name, v in zip(lesion_names, values[: len(lesion_names)], strict=True)})
        record["slice_position"] = round(values[len(lesion_names)], 6)
        record["style"] = self.style_bank.origins[style]
        record["predicted_modality"] = "" if predicted is None else self.classifier.modalities[predicted]
        record["retries"] = retries
        return record
