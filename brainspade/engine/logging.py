"""Progress bars, TensorBoard and figures: what a user watches while a stage runs, and the plots it leaves."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from brainspade.engine.distributed import is_main

T = TypeVar("T")

# Distinct colours for argmax label maps (background black), repeated if there are more classes.
LABEL_COLOURS = np.array(
    [
        [0, 0, 0],
        [66, 146, 198],
        [161, 217, 155],
        [254, 224, 139],
        [215, 48, 39],
        [253, 174, 97],
        [158, 1, 66],
        [102, 194, 165],
        [171, 221, 164],
        [94, 79, 162],
    ],
    dtype=np.float32,
) / 255.0


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", **kwargs) -> tqdm:
    """A tqdm bar on stderr, quiet when stderr is not a terminal (CI logs stay readable) and on ranks other than 0."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None if sys.stderr.isatty() and is_main() else True,
        **kwargs,
    )


def tensorboard_writer(folder: str | Path, enabled: bool = True):
    """A SummaryWriter in `folder/tensorboard`, or None on non-zero ranks / when disabled."""
    if not enabled or not is_main():
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(folder) / "tensorboard"))


def colourise_labels(pv_maps: torch.Tensor) -> torch.Tensor:
    """Colour-coded argmax of PV maps (N, C, H, W) -> RGB images (N, 3, H, W) in [0, 1]."""
    labels = pv_maps.argmax(dim=1).cpu().numpy()
    colours = LABEL_COLOURS[labels % len(LABEL_COLOURS)]
    return torch.from_numpy(colours).permute(0, 3, 1, 2).contiguous()


def grey_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Intensity images (N, 1, H, W), any range -> RGB (N, 3, H, W) in [0, 1], each image min-max scaled."""
    images = images.detach().float().cpu()
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    scaled = (images - low) / (high - low).clamp_min(1e-6)
    return scaled.expand(-1, 3, -1, -1)


def image_grid(columns: list[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Tile RGB batches (each N, 3, H, W) into one image: row i holds sample i of every column."""
    n = min(c.shape[0] for c in columns)
    height, width = columns[0].shape[-2:]
    grid = torch.ones(3, n * (height + padding) + padding, len(columns) * (width + padding) + padding)
    for col, batch in enumerate(columns):
        for row in range(n):
            top, left = padding + row * (height + padding), padding + col * (width + padding)
            grid[:, top : top + height, left : left + width] = batch[row].float().cpu()
    return grid


def log_image_columns(writer, tag: str, columns: list[torch.Tensor], step: int) -> None:
    """Log a grid whose columns are RGB batches (e.g. label | style | generated | real) to TensorBoard."""
    if writer is not None:
        writer.add_image(tag, image_grid(columns), step)


def in_plain_style(plot: Callable) -> Callable:
    """Draw off-screen in matplotlib's default style, whatever style other imports have set globally."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with plt.style.context("default"), plt.rc_context({"font.size": 8}):
            return plot(*args, **kwargs)

    return wrapper
