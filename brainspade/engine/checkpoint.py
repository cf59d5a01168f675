"""Checkpoints that resume exactly: weights, optimisers, EMA, step, RNG state and the config.

A checkpoint is a plain dict saved atomically with `torch.save` and loaded with
`weights_only=True` (no pickled code). Its `signature` (channel schema, slice shape, ...)
is compared with the current run's before anything is restored, so a checkpoint made for
another data schema is refused with one line instead of failing deep inside `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
        torch.save(state, tmp)
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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise BrainspadeError(
            f"{path}: not a readable brainspade checkpoint ({type(error).__name__}); delete it and re-run the stage"
        ) from error
    if expected_signature is not None:
        check_signature(path, state.get("signature", {}), expected_signature)
    return state


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
