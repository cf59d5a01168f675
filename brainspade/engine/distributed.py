"""Data parallelism under `torchrun`: one process per device, PyTorch's own DDP; nothing changes without torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in every process it
starts. `setup` reads them and joins the process group (gloo on CPU, nccl on CUDA); without them,
or with WORLD_SIZE=1, every function here is the single-process identity (rank 0 of 1, no-op
barriers), so a plain `brainspade train-...` runs exactly as before.

Batches: the training stages draw random batches (with replacement) from torch's global RNG.
Under DDP each rank re-seeds that RNG at every step from (seed, rank, step) with `seed_step`, so
ranks draw different samples (the with-replacement equivalent of a DistributedSampler) and a run
resumed at step k draws exactly what an uninterrupted run would have drawn from step k on.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Mapping
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from brainspade.engine.checkpoint import unwrap
from brainspade.engine.seeding import seed_everything
from brainspade.errors import BrainspadeError

# Rank 0 evaluates alone at the end of a stage while the others wait at a barrier: allow it time.
TIMEOUT = timedelta(hours=2)


def requested_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_type: str) -> None:
    """Join torchrun's process group once per process (gloo for CPU devices, nccl for CUDA); else nothing.

    The group is destroyed when the process exits.
    """
    if dist.is_initialized() or requested_world_size() <= 1:
        return
    if not dist.is_available():
        raise BrainspadeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    atexit.register(shutdown)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, logs, metrics and manifests."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK under torchrun on GPUs, else `device` unchanged."""
    if device.type == "cuda" and requested_world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when distributed (gradients averaged over ranks), else as is.

    Every parameter of a wrapped model must receive a gradient at each backward
    (find_unused_parameters stays off: it costs a graph traversal per step).
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def local_batch_size(batch_size: int, what: str) -> int:
    """This rank's share of a global batch of `batch_size` (shares differ by at most one; their sum is the batch)."""
    if batch_size < world_size():
        raise BrainspadeError(
            f"{what}={batch_size} is smaller than the {world_size()} torchrun processes; raise it or use fewer processes"
        )
    share, remainder = divmod(batch_size, world_size())
    return share + (1 if rank() < remainder else 0)


def seed_step(seed: int, step: int) -> None:
    """Under DDP: seed every RNG from (seed, rank, step), so ranks draw different batches reproducibly."""
    if is_distributed():
        seed_everything(int(np.random.SeedSequence([seed, rank(), step]).generate_state(1)[0]))


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must call it at the same step)."""
    if not is_distributed() or not values:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([float(values[n]) for n in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {n: float(v) / world_size() for n, v in zip(names, tensor.cpu().tolist(), strict=True)}


def parameter_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes of tensors (bit-exact: any difference between ranks shows)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_digests(models: Mapping[str, nn.Module]) -> list[str]:
    """The parameter digest of `models` on every rank, in rank order; raises if the ranks' weights differ.

    DDP keeps replicas identical by averaging gradients; a difference means a bug (a rank that
    skipped a step, a parameter outside DDP), and silently saving rank 0's weights would hide it.
    """
    tensors = {f"{name}.{key}": p for name, model in models.items() for key, p in unwrap(model).named_parameters()}
    digests = [parameter_digest(tensors)]
    if is_distributed():
        digests = [""] * world_size()
        dist.all_gather_object(digests, parameter_digest(tensors))
    if len(set(digests)) > 1:
        raise RuntimeError(f"DDP ranks hold different weights after training: {digests}")
    return digests
