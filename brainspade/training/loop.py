"""The one training skeleton of the four generator stages: resume, the step loop, logging, checkpoints.

Each trainer (label_vae, label_ldm, modisc, image_generator) builds its networks and
optimisers, wraps them in a `Checkpointer`, and hands `run_steps` a function doing one
optimisation step. Everything else (resume at the saved step with the saved optimiser and RNG
state, per-step seeding under torchrun, scalars, image grids, checkpoints, the step timer) is
here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainspade.engine import distributed
from brainspade.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from brainspade.engine.logging import progress, tensorboard_writer
from brainspade.engine.runtime import StepTimer


@dataclass
class Checkpointer:
    """The resumable state of one training: networks, optimisers, EMA copies, and what they were made for.

    `signature` (engine.checkpoint.schema_signature: channels, size, model arguments) is checked
    before anything is restored, so a rerun with another width or schema is refused in one line.
    """

    folder: Path
    signature: dict[str, Any]
    models: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    ema_models: Mapping[str, nn.Module] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    def resume(self, command: str) -> int:
        """Restore the folder's last checkpoint if there is one; the step to continue from."""
        if not self.path.is_file():
            return 0
        state = load_checkpoint(self.path, expected_signature=self.signature)
        step = restore_training_state(state, models=self.models, optimizers=self.optimizers,
                                      ema_models=self.ema_models)
        if step and distributed.is_main():
            print(f"[{command}] resuming at step {step}", flush=True)
        return step

    def save(self, step: int) -> None:
        if distributed.is_main():
            save_checkpoint(self.path, step=step, models=self.models, optimizers=self.optimizers,
                            ema_models=self.ema_models, signature=self.signature, config=self.config,
                            extra=self.extra)


@dataclass(frozen=True)
class Schedule:
    """How often the loop logs scalars, logs image grids and checkpoints (the sections' *_every keys)."""

    steps: int
    log_every: int
    checkpoint_every: int
    image_every: int | None = None


def run_steps(
    command: str,
    checkpointer: Checkpointer,
    schedule: Schedule,
    seed: int,
    device: torch.device,
    train_step: Callable[[int], Mapping[str, float]],
    log_images: Callable[[Any, int], None] | None = None,
) -> StepTimer:
    """Resume, then call `train_step(step)` until `schedule.steps`; return the step timer.

    `train_step` returns the step's scalar losses (logged as `loss/<name>`, averaged over the
    ranks); `log_images(writer, step)` adds image grids. The last step always logs and saves,
    and a run of 0 steps still leaves a loadable checkpoint.
    """
    start = checkpointer.resume(command)
    writer = tensorboard_writer(checkpointer.folder)
    timer = StepTimer(device)
    steps = schedule.steps
    bar = progress(total=steps, initial=start, desc=command, unit="step")
    for step in range(start, steps):
        distributed.seed_step(seed, step)
        losses = train_step(step)
        done = step + 1
        timer.tick()  # here, so the last step's checkpoint and image grid are not timed as training
        bar.update(1)
        if done % schedule.log_every == 0 or done == steps:
            losses = distributed.mean_over_ranks(dict(losses))
            if writer is not None:
                for name, value in losses.items():
                    writer.add_scalar(f"loss/{name}", value, done)
                for name, optimizer in checkpointer.optimizers.items():
                    writer.add_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"], done)
        if log_images is not None and writer is not None and schedule.image_every and (
                done % schedule.image_every == 0 or done == steps):
            log_images(writer, done)
        if done % schedule.checkpoint_every == 0 or done == steps:
            checkpointer.save(done)
    bar.close()
    if not checkpointer.path.is_file():
        checkpointer.save(start)  # steps=0: still leave a loadable model behind
    if writer is not None:
        writer.close()
    return timer
