"""Paths and small helpers every stage shares."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig


def workdir(cfg: DictConfig) -> Path:
    """The run's workdir as an absolute path (created if missing)."""
    path = Path(str(cfg.workdir)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_path(cfg: DictConfig, name: str) -> Path:
    """Where stage `name` keeps its folder inside the workdir."""
    return workdir(cfg) / name


def data_root(cfg: DictConfig) -> Path:
    return Path(str(cfg.data.root)).expanduser().resolve()


def select_device(cfg: DictConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(cfg.device))
