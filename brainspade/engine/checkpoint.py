"""Checkpoints that resume exactly: weights, optimisers, EMA, step, RNG state and the config.

A checkpoint is a plain dict saved atomically with `torch.save` and loaded with
`weights_only=True` (no pickled code). Its `signature` (channel schema, slice shape, ...)
is compared with the current run's before anything is restored, so a checkpoint made for
another data schema is refused with one line instead of failing deep inside `load_state_dict`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainspade.engine.atomic import atomic_path
from brainspade.engine.seeding import capture_rng_state, restore_rng_state
from brainspade.errors import BrainspadeError

CHECKPOINT_NAME = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile wrappers (their state-dict keys differ)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    ema_models: Mapping[str, nn.Module] | None = None,
    signature: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename) and return its path.

    Args:
        path: file to write.
        step: number of optimisation steps done; a resumed run continues at this step.
        models: trained networks by name.
        optimizers: their optimisers by name (Adam moments are what a plain resume loses).
        ema_models: exponential-moving-average copies by name.
        signature: what the weights were made for (channels, shapes); checked on load.
        config: the resolved config (plain containers) that rebuilds the networks.
        extra: any other plain values (model constructor arguments, scale factors, ...).
    """
    state = {
        "step": int(step),
        "models": {name: unwrap(m).state_dict() for name, m in models.items()},
        "optimizers": {name: o.state_dict() for name, o in (optimizers or {}).items()},
        "ema": {name: unwrap(m).state_dict() for name, m in (ema_models or {}).items()},
        "signature": dict(signature or {}),
        "config": dict(config or {}),
        "extra": dict(extra or {}),
        "rng": capture_rng_state(),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as error:  # torch reports a failed write (a full disk) as RuntimeError, not OSError
            raise BrainspadeError(
                f"{path}: could not write the checkpoint ({str(error).splitlines()[0][:80]}); is the disk full? "
                "Free space and re-run: training resumes from the last checkpoint"
            ) from error
    return path


def load_checkpoint(
    path: str | Path, *, expected_signature: Mapping[str, Any] | None = None, map_location: str = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint safely and check that it was made for this run's schema.

    Raises:
        BrainspadeError: the file is missing or unreadable, or its signature differs.
    """
    path = Path(path)
    if not path.is_file():
        raise BrainspadeError(f"{path}: checkpoint not found; run the stage that makes it first")
    state = _load_weights_only(path, map_location, "brainspade checkpoint", "delete it and re-run the stage")
    if expected_signature is not None:
        check_signature(path, state.get("signature", {}), expected_signature)
    return state


# Besides tensors and plain containers, nnU-Net's checkpoints hold numpy scalars (its logged Dice values):
# these rebuild a number from a dtype and bytes and can run no code.
NNUNET_PLAIN_GLOBALS = (np._core.multiarray.scalar, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType,
                        np.dtypes.Int64DType)


def load_nnunet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                           content: bytes | None = None) -> dict[str, Any]:
    """An nnU-Net checkpoint loaded weights-only (nnU-Net's own loader unpickles anything: a planted file runs code).

    `content`: the file's bytes, already read (then exactly these bytes are checked; `path` names them).

    Raises:
        BrainspadeError: the file is missing, unreadable, or holds anything but weights and plain values.
    """
    path = Path(path)
    if content is None and not path.is_file():
        raise BrainspadeError(f"{path}: nnU-Net checkpoint not found; re-run the experiment to train the arm")
    with torch.serialization.safe_globals(list(NNUNET_PLAIN_GLOBALS)):
        return _load_weights_only(path, map_location, "nnU-Net checkpoint",
                                  "delete the arm's folder (or run with force=true) to retrain it", content)


def _load_weights_only(path: Path, map_location: str | torch.device, what: str, fix: str,
                       content: bytes | None = None) -> dict[str, Any]:
    try:
        source = io.BytesIO(content) if content is not None else path
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated, foreign or code-carrying files
        reason = _unsafe_reason(error)
        raise BrainspadeError(f"{path}: not a readable {what} ({reason}); {fix}") from error
    if not isinstance(state, dict):
        raise BrainspadeError(f"{path}: not a readable {what} (a {type(state).__name__}, not a dict); {fix}")
    return state


def _unsafe_reason(error: Exception) -> str:
    """'it would import os.system' for a file that carries code; the error's type otherwise."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(error))
    if match:
        return f"it would import {match.group(1)} when loaded, so it was not loaded"
    return type(error).__name__


def check_signature(path: Path, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    for key, value in expected.items():
        saved_value = saved.get(key)
        if _normalise(saved_value) != _normalise(value):
            raise BrainspadeError(
                f"{path}: checkpoint was made for {key}={saved_value!r} but this run has {key}={value!r}; "
                f"use another workdir or delete {path.parent} to start this stage afresh"
            )


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def restore_training_state(
    state: Mapping[str, Any],
    *,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    ema_models: Mapping[str, nn.Module] | None = None,
    restore_rng: bool = True,
) -> int:
    """Load weights, optimiser moments, EMA and RNG state into live objects; return the step.

    The learning rates stay those the optimisers were built with from this run's config (no
    stage schedules them), so a rerun with another rate resumes the moments at the new rate;
    the saved ones would silently override it.
    """
    for name, model in models.items():
        unwrap(model).load_state_dict(state["models"][name])
    for name, optimizer in (optimizers or {}).items():
        configured_rates = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizers"][name])
        for group, rate in zip(optimizer.param_groups, configured_rates, strict=True):
            group["lr"] = rate
    for name, model in (ema_models or {}).items():
        unwrap(model).load_state_dict(state["ema"][name])
    if restore_rng:
        restore_rng_state(state["rng"])
    return int(state["step"])


def schema_signature(channels: list[str], lesion_channels: list[str], size: list[int] | tuple[int, int],
                     model_args: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What every brainspade checkpoint was made for: the channel schema, the slice size and its networks'
    constructor arguments by name (checked on resume, and when a later stage loads the folder)."""
    return {"channels": list(channels), "lesion_channels": list(lesion_channels), "size": [int(s) for s in size],
            "model_args": {name: dict(args) for name, args in model_args.items()}}


def build_model(state: Mapping[str, Any], name: str, cls: type[nn.Module], *, ema: bool = False) -> nn.Module:
    """Network `name` of a loaded checkpoint, rebuilt from its saved constructor arguments (EMA weights if asked)."""
    model = cls(**state["signature"]["model_args"][name])
    model.load_state_dict(state["ema" if ema else "models"][name])
    return model
