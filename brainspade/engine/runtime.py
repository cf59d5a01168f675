"""How a training stage runs: device, torchrun rank, bf16 autocast, channels_last and torch.compile.

`runtime.precision` also decides whether `sample` runs its networks under bf16 autocast (`uses_bf16`).

The `runtime` config section switches each one; "auto" means on for CUDA and off for the CPU
(bf16 autocast only where the GPU supports bf16). Networks are built as usual, then passed
through `Runtime.prepare` (memory format -> DDP -> compile); forward passes and losses run in
`with runtime.autocast():`, backward passes outside it. bf16 keeps fp32's exponent range, so no
loss scaling is needed (unlike fp16).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from brainspade.engine import distributed
from brainspade.errors import BrainspadeError
from brainspade.settings import RuntimeSettings


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile: bool

    @classmethod
    def create(cls, settings: RuntimeSettings, device: str = "auto", *, auto_bf16: bool = True) -> Runtime:
        """Resolve the runtime settings for a device name and join torchrun's process group when started by it.

        `auto_bf16=False`: precision "auto" means fp32 for this stage on every device (for networks
        that autocast slows down); an explicit "bf16" still applies.
        """
        device_ = distributed.device_for(select_device(device))
        distributed.setup(device_.type)
        cuda = device_.type == "cuda"
        bf16 = uses_bf16(settings.precision, device_, auto_bf16=auto_bf16)
        return cls(device_, bf16, _switch(settings.channels_last, cuda), _switch(settings.compile, cuda))

    def autocast(self) -> torch.autocast:
        """bf16 autocast on this device (a no-op context when precision is fp32)."""
        return bf16_autocast(self.device, self.bf16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """A trained network moved to the device, in channels_last, DDP-wrapped under torchrun, compiled if asked.

        Keep the bare `model` for anything but the training forward (EMA, checkpoints, sampling):
        `engine.checkpoint.unwrap` recovers it from the wrappers.
        """
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = distributed.wrap(model, self.device)
        return torch.compile(model) if self.compile else model

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the device, channels_last for 4-D images when that is on."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def describe(self) -> dict:
        return {"device": str(self.device), "processes": distributed.world_size(),
                "precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last,
                "compile": self.compile}

    def summary(self, models: Mapping[str, nn.Module], timer: StepTimer | None = None, command: str = "") -> dict:
        """`describe()`, the measured step rate and every rank's parameter digest of `models` (all ranks call it).

        Rank 0 prints the step rate as soon as training ends (before the evaluation).
        """
        rate = {"steps_timed": timer.count, "steps_per_second": timer.rate()} if timer else {}
        if rate.get("steps_per_second") and distributed.is_main():
            print(f"[{command}] trained at {rate['steps_per_second']:.4f} steps/s over {timer.count} steps "
                  f"({distributed.world_size()} process(es), {'bf16' if self.bf16 else 'fp32'})", flush=True)
        return {**self.describe(), **rate, "weight_digests": distributed.weight_digests(models)}


@dataclass
class StepTimer:
    """Training steps per second, counted from the end of the first step (which pays lazy initialisation)."""

    device: torch.device
    count: int = 0
    _first: float | None = field(default=None, repr=False)
    _last: float = field(default=0.0, repr=False)

    def tick(self) -> None:
        """Call once at the end of every step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously; time them, not their launch
        self._last = time.perf_counter()
        if self._first is None:
            self._first = self._last
        else:
            self.count += 1

    def rate(self) -> float | None:
        return self.count / (self._last - self._first) if self.count else None


def uses_bf16(precision: str, device: torch.device, *, auto_bf16: bool = True) -> bool:
    """Whether `runtime.precision` (auto | fp32 | bf16) means bf16 autocast on `device`: training and `sample` alike.

    "auto" is bf16 only on a CUDA GPU that supports it (and where `auto_bf16`); on a CPU it is fp32, since most
    CPUs emulate bf16. An explicit "bf16" on such a CPU is honoured, with a warning.
    """
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and auto_bf16 and cuda and torch.cuda.is_bf16_supported())
    if bf16 and not cuda and not cpu_has_native_bf16():
        print("[runtime] warning: runtime.precision=bf16 on a CPU without native bf16 (AVX-512 BF16 / AMX): "
              "autocast is emulated and 12-16x slower than fp32 here (benchmarks/RESULTS.md); "
              "use runtime.precision=auto", file=sys.stderr, flush=True)
    return bf16


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on `device` when `enabled`, else a context that changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (oneDNN's own test); False where torch cannot tell."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private, so guarded
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _switch(value: str, cuda: bool) -> bool:
    """auto | true | false (checked by RuntimeSettings) -> on or off."""
    return cuda if value == "auto" else value == "true"


def select_device(name: str = "auto") -> torch.device:
    """The device a command runs on: auto (CUDA when available), cpu or cuda (refused without CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BrainspadeError("device=cuda: this torch build sees no CUDA GPU; use device=cpu or device=auto")
    if name not in {"cpu", "cuda"}:
        raise BrainspadeError(f"device={name}: use auto, cpu or cuda")
    return torch.device(name)
