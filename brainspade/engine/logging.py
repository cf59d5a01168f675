"""Progress bars, TensorBoard and figures: what a user watches while a stage runs, and the plots it leaves."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
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


LOG_EVERY_S = 30.0  # a redirected log gets a progress line at least this often while work advances


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", **kwargs):
    """Progress on stderr: tqdm's bar in a terminal, plain lines in a redirected log (`LogProgress`), nothing on
    ranks other than 0."""
    if not is_main():
        return tqdm(iterable, total=total, desc=desc, disable=True, **kwargs)
    if not sys.stderr.isatty():
        return LogProgress(iterable, total=total, desc=desc, unit=kwargs.get("unit", "it"),
                           initial=kwargs.get("initial", 0))
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=1.0, **kwargs)


class LogProgress:
    """Progress for a log file, CI or a cluster job: one line with count, rate and time left at most every
    LOG_EVERY_S seconds while work advances, and one at the end (tqdm's bar redraws one line with carriage returns,
    which a log shows as one endless line, or, disabled, not at all)."""

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every: float = LOG_EVERY_S, stream=None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = self.first = initial
        self.started = self.shown = time.monotonic()
        self.shown_n = initial
        self.stream = stream
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.shown >= self.every:
            self._show()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.first and self.n != self.shown_n:  # the last count, unless its line was just written
                self._show()

    def line(self) -> str:
        """E.g. `[nnU-Net] 9/20 epoch (45%), 7.9 s/epoch, 1:11 elapsed, 1:27 left`."""
        elapsed = time.monotonic() - self.started
        done = self.n - self.first
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        parts = [f"[{self.desc}] {count}"]
        if done > 0 and elapsed > 0:
            per = elapsed / done
            parts.append(f"{per:.2f} s/{self.unit}" if per >= 1 else f"{1 / per:.2f} {self.unit}/s")
        parts.append(f"{_clock(elapsed)} elapsed")
        if done > 0 and self.total:
            parts.append(f"{_clock(elapsed / done * max(self.total - self.n, 0))} left")
        return ", ".join(parts)

    def _show(self) -> None:
        self.shown, self.shown_n = time.monotonic(), self.n
        print(self.line(), file=self.stream or sys.stderr, flush=True)
        note_progress_line()


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


_last_line = [time.monotonic()]


def note_progress_line() -> None:
    """Record that a progress line was just written (the heartbeat stays quiet while they come)."""
    _last_line[0] = time.monotonic()


_activities: list[tuple[str, float]] = []  # the heartbeat's labels, outermost first, with their start times


@contextlib.contextmanager
def heartbeat(label: str, every: float = 60.0):
    """While the block runs with stderr redirected, write `[label] still working (N min)` whenever no progress line
    came for `every` seconds: steps with no counter of their own (a site-model fit, an evaluation) still show life.
    Nested blocks (a demo's stages) name the innermost activity; one thread serves them all."""
    if sys.stderr.isatty() or not is_main():
        yield
        return
    _activities.append((label, time.monotonic()))
    note_progress_line()
    stop, thread = threading.Event(), None

    def beat() -> None:
        while not stop.wait(min(every, 5.0)):
            if _activities and time.monotonic() - _last_line[0] >= every:
                name, since = _activities[-1]
                print(f"[{name}] still working ({(time.monotonic() - since) / 60:.0f} min)", file=sys.stderr,
                      flush=True)
                note_progress_line()

    if len(_activities) == 1:
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
    try:
        yield
    finally:
        _activities.pop()
        if thread is not None:
            stop.set()
            thread.join()


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
