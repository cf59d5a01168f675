"""PV-map batches and latents shared by the label VAE and label LDM trainings."""

from __future__ import annotations

import numpy as np
import torch

from brainspade.data.slice_cache import SliceCache
from brainspade.errors import BrainspadeError
from brainspade.models.label_vae import LabelVAE


def load_pv_maps(cache: SliceCache, indices: np.ndarray) -> torch.Tensor:
    """PV maps of the given slices as one float16 tensor (N, C, H, W) in memory (batches are cut from it)."""
    return torch.from_numpy(np.ascontiguousarray(cache.pv_maps[np.asarray(indices, dtype=np.int64)]))


def as_pv(batch: torch.Tensor) -> torch.Tensor:
    """float16 storage -> float32 PV maps whose channels sum to 1 again."""
    batch = batch.float()
    return batch / batch.sum(dim=1, keepdim=True).clamp_min(1e-6)


def batch_indices(count: int, batch_size: int, enriched: torch.Tensor | None = None,
                  enriched_fraction: float = 0.0) -> torch.Tensor:
    """Positions of a random batch, drawn with torch's global RNG (checkpointed: a resumed run draws the same).

    With `enriched` (positions of rare slices, e.g. those with a lesion) a share `enriched_fraction`
    of the batch comes from them, the rest from all slices. For the LDM this changes how often each
    condition is seen, not what is learnt for a condition.
    """
    size = min(batch_size, count)
    index = torch.randint(0, count, (size,))
    if enriched is not None and len(enriched) and enriched_fraction > 0:
        rare = int(round(enriched_fraction * size))
        index[:rare] = enriched[torch.randint(0, len(enriched), (rare,))]
    return index


def random_batch(pv_maps: torch.Tensor, batch_size: int, device: torch.device,
                 enriched: torch.Tensor | None = None, enriched_fraction: float = 0.0) -> torch.Tensor:
    """A batch of PV maps (see `batch_indices`)."""
    return as_pv(pv_maps[batch_indices(len(pv_maps), batch_size, enriched, enriched_fraction)]).to(device)


def lesion_positions(cache: SliceCache, indices: np.ndarray, fraction: float, setting: str) -> torch.Tensor:
    """Positions within `indices` of the slices with any lesion (from the cache's lesion proportions).

    They are the enriched share of each batch (`batch_indices`); `fraction` is that share, checked here
    for both label stages and named by `setting` in the error.
    """
    if not 0 <= fraction <= 1:
        raise BrainspadeError(f"{setting}={fraction}: use a share between 0 and 1")
    if not cache.lesion_columns:
        return torch.zeros(0, dtype=torch.long)
    proportions = np.stack([cache.label_table[c][indices] for c in cache.lesion_columns], axis=1)
    return torch.from_numpy(np.flatnonzero(proportions.sum(axis=1) > 0))


def inverse_frequency_weights(pv_maps: torch.Tensor, max_weight: float = 50.0) -> torch.Tensor:
    """Per-channel L1 weights (C,) ~ 1 / channel frequency, mean 1, capped at `max_weight`.

    Rare channels (lesions: a few percent of a tenth of the slices) otherwise contribute almost
    nothing to a plain L1 and the VAE learns to drop them.
    """
    frequency = pv_maps.float().mean(dim=(0, 2, 3)).clamp_min(1e-6)
    weights = (1.0 / frequency).clamp_max(max_weight * (1.0 / frequency).min())
    return weights / weights.mean()


@torch.no_grad()
def encode_means(vae: LabelVAE, pv_maps: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Latent means of every PV map (the LDM trains on these)."""
    vae = vae.to(device).eval()
    chunks = [vae.encode(as_pv(pv_maps[i : i + batch_size]).to(device))[0].cpu() for i in range(0, len(pv_maps), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def reconstruct(vae: LabelVAE, pv_maps: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    vae = vae.to(device).eval()
    chunks = [vae.decode(vae.encode(as_pv(pv_maps[i : i + batch_size]).to(device))[0]).cpu()
              for i in range(0, len(pv_maps), batch_size)]
    return torch.cat(chunks)


def micro_batches(size: int, parts: int) -> list[tuple[slice, float]]:
    """`parts` contiguous slices of a batch of `size` (sizes differ by at most one), each with its share of the batch.

    A loss that is a mean over its micro-batch, weighted by that share and summed, is the mean over the
    whole batch: gradients accumulated this way are the batch's gradient (`label_vae.accumulate`,
    `label_ldm.accumulate`). More parts than samples give one sample per part.
    """
    parts = max(1, min(parts, size))
    length, remainder = divmod(size, parts)
    slices, start = [], 0
    for part in range(parts):
        stop = start + length + (1 if part < remainder else 0)
        slices.append((slice(start, stop), (stop - start) / size))
        start = stop
    return slices
