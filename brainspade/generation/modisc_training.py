"""Training and evaluation of the modality / data-set classifier on real slices (train-modisc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from brainspade.data.datasets import ImageSlices, generator_image_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.data.slicing import background_channel
from brainspade.engine import distributed
from brainspade.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from brainspade.engine.logging import progress, tensorboard_writer
from brainspade.engine.runtime import Runtime, StepTimer
from brainspade.errors import BrainspadeError
from brainspade.generation.images import build_classifier


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


def train_classifier(cfg: DictConfig, cache: SliceCache, folder: Path, runtime: Runtime) -> dict | None:
    """Train (resuming from folder's checkpoint) and return the held-out metrics (None on ranks other than 0)."""
    settings = cfg.modisc
    device = runtime.device
    source = list(cfg.data.source_datasets)
    train = generator_image_indices(cache, source)
    if len(train) == 0:
        raise BrainspadeError(f"{cache.folder}: no train-split images of the source data sets {source}")
    modalities = sorted(set(cache.image_table["modality"][train].tolist()))
    dataset = ImageSlices(cache, train, modalities, source)
    background = background_channel(cache.channels)
    model_args = {
        "n_modalities": len(modalities), "n_datasets": len(source), "init_features": int(settings.init_features),
        "growth_rate": int(settings.growth_rate), "block_config": [int(b) for b in settings.block_config],
        "dropout": float(settings.dropout),
    }
    network = build_classifier(model_args).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=float(settings.lr), weight_decay=float(settings.weight_decay))
    # The architecture is part of the signature: a changed width is refused in one line, not deep in load_state_dict.
    signature = {"channels": cache.channels, "size": list(cache.size), "modalities": modalities, "datasets": source,
                 "model_args": model_args}
    checkpoint = folder / CHECKPOINT_NAME
    start = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, expected_signature=signature)
        start = restore_training_state(state, models={"classifier": network}, optimizers={"classifier": optimizer})
        if distributed.is_main():
            print(f"[train-modisc] resuming at step {start}")
    trained = runtime.prepare(network)

    def save(at: int) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(checkpoint, step=at, models={"classifier": network}, optimizers={"classifier": optimizer},
                        signature=signature, config=OmegaConf.to_container(cfg, resolve=True),
                        extra={"model_args": model_args, "modalities": modalities, "datasets": source})

    writer = tensorboard_writer(folder)
    steps = int(settings.steps)
    batch_size = distributed.local_batch_size(int(settings.batch_size), "modisc.batch_size")
    augment = settings.augment
    trained.train()
    timer = StepTimer(device)
    for step in progress(range(start, steps), initial=start, total=steps, desc="train-modisc"):
        distributed.seed_step(int(cfg.seed), step)
        batch = collate(dataset, torch.randint(len(train), (batch_size,)).numpy(), background)
        images = runtime.inputs(augment_intensity(batch["image"], batch["brain"], float(augment.bias_field),
                                                  float(augment.gamma), float(augment.noise)))
        with runtime.autocast():
            modality_logits, dataset_logits = trained(images)
        loss = F.cross_entropy(modality_logits.float(), batch["modality"].to(device)) + F.cross_entropy(
            dataset_logits.float(), batch["dataset"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % int(settings.log_every) == 0:
            mean_loss = distributed.mean_over_ranks({"loss": loss.item()})["loss"]
            if writer is not None:
                writer.add_scalar("modisc/loss", mean_loss, step + 1)
        if (step + 1) % int(settings.checkpoint_every) == 0 and step + 1 < steps:
            save(step + 1)
        timer.tick()
    save(steps)
    if writer is not None:
        writer.close()
    run_info = runtime.summary({"classifier": network}, timer, "train-modisc")
    if not distributed.is_main():
        return None
    network.eval()
    metrics = evaluate_classifier(network, cache, modalities, source, int(settings.batch_size), device)
    return {**metrics, "runtime": run_info}


@torch.no_grad()
def evaluate_classifier(network, cache: SliceCache, modalities: list[str], source: list[str], batch_size: int,
                        device: torch.device) -> dict:
    """Accuracy of each head on the test split of the source data sets; modality accuracy on every other test set."""
    background = background_channel(cache.channels)
    datasets_all = sorted(set(cache.image_table["dataset"].tolist()))
    metrics: dict = {"modalities": modalities, "datasets": source, "heldout": {}, "per_test_set": {}}
    correct_mod = correct_dat = total = 0
    for name in datasets_all:
        for modality in modalities:
            indices = cache.image_indices(split="test", datasets=[name], modalities=[modality])
            if len(indices) == 0:
                continue
            slices = ImageSlices(cache, indices, modalities, source)
            hits_mod = hits_dat = 0
            for start in range(0, len(indices), batch_size):
                batch = collate(slices, np.arange(start, min(start + batch_size, len(indices))), background)
                modality_logits, dataset_logits = network(batch["image"].to(device))
                hits_mod += int((modality_logits.argmax(1).cpu() == batch["modality"]).sum())
                hits_dat += int((dataset_logits.argmax(1).cpu() == batch["dataset"]).sum())
            entry = {"n": int(len(indices)), "modality_accuracy": hits_mod / len(indices)}
            if name in source:
                entry["dataset_accuracy"] = hits_dat / len(indices)
                correct_mod, correct_dat, total = correct_mod + hits_mod, correct_dat + hits_dat, total + len(indices)
            metrics["per_test_set"][f"{name}/{modality}"] = entry
    if total == 0:
        raise BrainspadeError(f"{cache.folder}: the source data sets {source} have no test-split images to evaluate on")
    metrics["heldout"] = {"n": total, "modality_accuracy": correct_mod / total, "dataset_accuracy": correct_dat / total}
    return metrics
