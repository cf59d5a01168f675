"""Training and evaluation of the modality / data-set classifier on real slices (train-modisc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brainspade.data.datasets import ImageSlices
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import background_channel
from brainspade.engine import distributed
from brainspade.engine.checkpoint import schema_signature
from brainspade.engine.runtime import Runtime
from brainspade.engine.seeding import seed_everything
from brainspade.errors import BrainspadeError
from brainspade.models.modality_classifier import ModalityDatasetClassifier
from brainspade.settings import ModiscSettings
from brainspade.training.loop import Checkpointer, Schedule, run_steps
from brainspade.training.models import build

COMMAND = "train-modisc"


def collate(dataset: ImageSlices, items: np.ndarray, background: int) -> dict[str, torch.Tensor]:
    """Items (positions in `dataset`) as a batch: images (B,1,H,W), pv_maps, brain masks (B,1,H,W), modality and data set indices."""
    records = [dataset[int(i)] for i in items]
    pv_maps = torch.stack([r["pv_map"] for r in records])
    return {
        "image": torch.stack([r["image"] for r in records]),
        "pv_map": pv_maps,
        "brain": (pv_maps[:, background : background + 1] < 0.5).float(),
        "modality": torch.tensor([r["modality"] for r in records]),
        "dataset": torch.tensor([r["dataset"] for r in records]),
        "index": torch.tensor([r["index"] for r in records]),
    }


def augment_intensity(images: torch.Tensor, brain: torch.Tensor, bias_field: float, gamma: float,
                      noise: float) -> torch.Tensor:
    """Random bias field, gamma and Gaussian noise per slice, then the cache's z-scoring in the brain again.

    So the classifier learns contrast (which tissue is bright), not scanner-specific intensity
    profiles; the draws come from torch's RNG, which checkpoints restore.
    """
    batch, _, height, width = images.shape
    raw = images - images.amin(dim=(1, 2, 3), keepdim=True)  # background -> 0, as before z-scoring
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    basis = torch.stack([ys, xs, ys * xs, ys**2, xs**2]).to(images)  # low-order smooth field (as RandBiasField)
    coefficients = (torch.rand(batch, 5, 1, 1, device=images.device) * 2 - 1) * bias_field
    raw = raw * torch.exp((coefficients[:, :, None] * basis[None, :, None]).sum(dim=1))
    scale = raw.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    exponent = torch.exp((torch.rand(batch, 1, 1, 1, device=images.device) * 2 - 1) * gamma)
    raw = (raw / scale) ** exponent
    raw = raw + torch.randn_like(raw) * torch.rand(batch, 1, 1, 1, device=images.device) * noise
    return zscore_in_mask(raw, brain)


def zscore_in_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum(dim=(1, 2, 3), keepdim=True).clamp_min(2)
    mean = (images * mask).sum(dim=(1, 2, 3), keepdim=True) / count
    std = (((images - mean) ** 2 * mask).sum(dim=(1, 2, 3), keepdim=True) / count).sqrt().clamp_min(1e-6)
    return (images - mean) / std


def train_classifier(folder: Path, cache: SliceCache, train: np.ndarray, sources: list[str], settings: ModiscSettings,
                     runtime: Runtime, seed: int, config: dict) -> dict | None:
    """Train (resuming from folder's checkpoint) and return the held-out metrics (None on ranks other than 0)."""
    device = runtime.device
    if len(train) == 0:
        raise BrainspadeError(f"{cache.folder}: no train-split images of the source data sets {sources}")
    seed_everything(seed)  # the network's first weights: from the seed, not from whatever drew numbers before
    modalities = sorted(set(cache.image_table["modality"][train].tolist()))
    dataset = ImageSlices(cache, train, modalities, sources)
    background = background_channel(cache.channels)
    args = {"classifier": {**settings.model, "n_modalities": len(modalities), "n_datasets": len(sources)}}
    network = build(ModalityDatasetClassifier, args["classifier"], "modisc.model").to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # The classes are part of the signature: a rerun on other modalities or data sets is refused in one line.
    signature = {**schema_signature(cache.channels, cache.lesion_channels, cache.size, args),
                 "modalities": modalities, "datasets": sources}
    checkpointer = Checkpointer(folder, signature, {"classifier": network}, {"classifier": optimizer},
                                extra={"modalities": modalities, "datasets": sources}, config=config)
    trained = runtime.prepare(network)
    batch_size = distributed.local_batch_size(settings.batch_size, "modisc.batch_size")
    augment = settings.augment
    trained.train()

    def train_step(step: int) -> dict[str, float]:
        batch = collate(dataset, torch.randint(len(train), (batch_size,)).numpy(), background)
        images = runtime.inputs(augment_intensity(batch["image"], batch["brain"], augment.bias_field,
                                                  augment.gamma, augment.noise))
        with runtime.autocast():
            modality_logits, dataset_logits = trained(images)
        loss = F.cross_entropy(modality_logits.float(), batch["modality"].to(device)) + F.cross_entropy(
            dataset_logits.float(), batch["dataset"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"cross_entropy": loss.item()}

    schedule = Schedule(settings.steps, settings.log_every, settings.checkpoint_every)
    timer = run_steps(COMMAND, checkpointer, schedule, seed, device, train_step)
    run_info = runtime.summary({"classifier": network}, timer, COMMAND)
    if not distributed.is_main():
        return None
    network.eval()
    metrics = evaluate_classifier(network, cache, modalities, sources, settings.batch_size, device)
    return {**metrics, "runtime": run_info}


@torch.no_grad()
def evaluate_classifier(network, cache: SliceCache, modalities: list[str], source: list[str], batch_size: int,
                        device: torch.device) -> dict:
    """Accuracy of each head on the test split of the source data sets; modality accuracy on every other data set's
    dev subjects (a target's test subjects are for the experiments' report only)."""
    background = background_channel(cache.channels)
    datasets_all = sorted(set(cache.image_table["dataset"].tolist()))
    metrics: dict = {"modalities": modalities, "datasets": source, "heldout": {}, "per_test_set": {}}
    correct_mod = correct_dat = total = 0
    for name in datasets_all:
        for modality in modalities:
            split = "test" if name in source else "dev"
            indices = cache.image_indices(split=split, datasets=[name], modalities=[modality])
            if len(indices) == 0:
                continue
            slices = ImageSlices(cache, indices, modalities, source)
            hits_mod = hits_dat = 0
            for start in range(0, len(indices), batch_size):
                batch = collate(slices, np.arange(start, min(start + batch_size, len(indices))), background)
                modality_logits, dataset_logits = network(batch["image"].to(device))
                hits_mod += int((modality_logits.argmax(1).cpu() == batch["modality"]).sum())
                hits_dat += int((dataset_logits.argmax(1).cpu() == batch["dataset"]).sum())
            entry = {"n": int(len(indices)), "split": split, "modality_accuracy": hits_mod / len(indices)}
            if name in source:
                entry["dataset_accuracy"] = hits_dat / len(indices)
                correct_mod, correct_dat, total = correct_mod + hits_mod, correct_dat + hits_dat, total + len(indices)
            metrics["per_test_set"][f"{name}/{modality}"] = entry
    if total == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {source} have no test-split images to evaluate on")
    metrics["heldout"] = {"n": total, "modality_accuracy": correct_mod / total, "dataset_accuracy": correct_dat / total}
    return metrics
