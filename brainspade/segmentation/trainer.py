"""The nnU-Net trainer brainspade trains with: nnU-Net's defaults, the length from the profile.

Importing this module imports nnunetv2's trainer (heavy); `segmentation.nnunet` imports it
only when a model is trained or loaded. It imports nothing of `segmentation.nnunet` (one direction only).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from brainspade.engine.atomic import atomic_path
from brainspade.engine.checkpoint import load_nnunet_checkpoint
from brainspade.engine.logging import progress, tensorboard_writer
from brainspade.settings import SegmentationSettings

LOGGED = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice")  # nnU-Net's per-epoch values
PROGRESS_PNG_EVERY = 10  # epochs between redraws of nnU-Net's progress.png (and at the last epoch)


class BrainspadeTrainer(nnUNetTrainer):
    """nnUNetTrainer whose length comes from brainspade's profile; its scalars also go to TensorBoard.

    The constructor keeps nnU-Net's signature (nnU-Net records its arguments in checkpoints);
    `configure` sets the length before training starts.
    """

    def configure(self, settings: SegmentationSettings, tensorboard_folder: Path | None,
                  case_probabilities: dict[str, float] | None = None, label: str = "nnU-Net") -> None:
        """`label` names the progress lines (arms trained at once write to one log)."""
        self.num_epochs = settings.epochs
        self.num_iterations_per_epoch = settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.save_every = 1  # an interrupted run resumes at its last finished epoch
        self.writer = tensorboard_writer(tensorboard_folder) if tensorboard_folder is not None else None
        self.bar, self.label = None, label
        self.case_probabilities = case_probabilities  # None: nnU-Net's uniform draw of training cases
        self.class_weights = dict(settings.class_weights or {})
        # nnU-Net redraws progress.png with matplotlib after every epoch: 1.1 s here, 13% of a cpu-profile epoch
        # (8.5 s) and about 7 minutes of the cpu demo's 360 epochs. The curves reach TensorBoard every epoch.
        draw_progress_png = self.logger.plot_progress_png

        def throttled_progress_png(output_folder: str) -> None:
            if (self.current_epoch + 1) % PROGRESS_PNG_EVERY == 0 or self.current_epoch + 1 >= self.num_epochs:
                draw_progress_png(output_folder)

        self.logger.plot_progress_png = throttled_progress_png

    def _build_loss(self):
        loss = super()._build_loss()
        if self.class_weights:
            # Per-class weights in nnU-Net's cross-entropy only (Dice unchanged): a small class (a tumour core
            # inside its edema) otherwise costs too little to be split off within a short training.
            labels = self.dataset_json["labels"]
            weights = torch.ones(len(labels), device=self.device)
            for name, weight in self.class_weights.items():
                weights[int(labels[name])] = float(weight)
            compound = getattr(loss, "loss", loss)  # inside nnU-Net's deep-supervision wrapper, if any
            compound.ce.weight = weights  # CrossEntropyLoss's `weight` buffer
        return loss

    def get_dataloaders(self):
        train, validation = super().get_dataloaders()
        if self.case_probabilities:
            # nnU-Net's loader draws cases with these probabilities (its `sampling_probabilities`); the
            # single- and multi-process augmenters hold it as `data_loader` / `generator`.
            loader = case_loader(train)
            weights = np.array([self.case_probabilities.get(case, 0.0) for case in loader.indices])
            loader.sampling_probabilities = weights / weights.sum()
        return train, validation

    def on_train_start(self):
        super().on_train_start()
        self.bar = progress(total=self.num_epochs, initial=self.current_epoch, desc=self.label, unit="epoch")

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        if self.writer is not None:
            for name in LOGGED:
                self.writer.add_scalar(f"nnunet/{name}", float(self.logger.get_value(name, step=-1)), epoch)
            self.writer.flush()
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self):
        super().on_train_end()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net writes in place; a kill mid-write would leave a truncated checkpoint_latest to resume from.
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)  # writes nothing: no empty file may replace a checkpoint
        with atomic_path(filename) as temporary:
            super().save_checkpoint(str(temporary))

    def load_checkpoint(self, filename_or_checkpoint: dict[str, Any] | str) -> None:
        # Checked weights-only, whoever calls it: nnU-Net's own loader unpickles code from a replaced file.
        if not isinstance(filename_or_checkpoint, str):
            return super().load_checkpoint(filename_or_checkpoint)
        content = Path(filename_or_checkpoint).read_bytes()
        load_nnunet_checkpoint(filename_or_checkpoint, self.device, content=content)  # refuses all but weights
        # nnU-Net's loader takes only a file name (its dict branch is broken); it gets the very bytes just checked,
        # so a file swapped in after the check is never read.
        with tempfile.TemporaryDirectory() as folder:
            verified = Path(folder) / Path(filename_or_checkpoint).name
            verified.write_bytes(content)
            super().load_checkpoint(str(verified))

    def plot_network_architecture(self):
        pass  # nnU-Net's plot needs hiddenlayer; nothing a brainspade user reads


def case_loader(augmenter):
    """The nnU-Net data loader inside batchgenerators' single- (`data_loader`) or multi-process (`generator`) augmenter."""
    return getattr(augmenter, "data_loader", None) or augmenter.generator
