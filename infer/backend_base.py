"""The backend contract every runtime implements: `Backend`, and the CPU thread rule backends share.

A backend maps `(N, 3, H, W)` float32 RGB in [0, 1] to the same, clamped to [0, 1], on the input's device. An
output computed in reduced precision (fp16 / bf16) that is NaN, infinite or constant (from a non-constant input,
`export.checks.output_problem`) is computed again in fp32 and the backend stays in fp32, saying so in `notes`.
"""

from __future__ import annotations

import os

import torch

from export.checks import output_problem
from model.pooling import PoolRequest

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_STRIDE = 16  # for files that do not record their stride: the default NAFNet's (and a multiple of ResNet's 1)


class Backend:
    """A model ready to run: `backend(degraded, condition=None) -> restored`, plus what callers need to know.

    `name`: the kind of backend and file; `device`: where it runs; `stride`: the multiple it pads to internally
    (tiles are multiples of it); `conditioned`: whether it accepts a strength condition (`model.condition`);
    `precision`: what it computes in now; `notes`: warnings for the user (precision fallbacks, provider changes).
    `fixed_hw` is `(H, W)` for a model file that only accepts one input size, `max_hw` the largest input a file
    accepts (a TensorRT profile), each None when there is no such limit. `pool_channels` is P > 0 when the backend
    takes and returns whole-image pooling statistics (`model.pooling`: eager checkpoints, ONNX files written by
    `export.onnx`), so tiles can use the image's statistics; 0 when tiles can only pool alone.
    """

    def __init__(self, name: str, device: torch.device, stride: int, conditioned: bool, precision: str) -> None:
        self.name, self.device, self.stride, self.conditioned = name, device, int(stride), conditioned
        self.precision = precision
        self.notes: list[str] = []
        self.chosen = ""  # how the runtime was chosen, for the shipped model (infer.backends.open_shipped)
        self.fixed_hw: tuple[int, int] | None = None
        self.max_hw: tuple[int, int] | None = None
        self.pool_channels = 0

    def __call__(
        self, degraded: torch.Tensor, condition: torch.Tensor | None = None, pooling: PoolRequest | None = None
    ) -> torch.Tensor:
        """Restore `(N, 3, H, W)` float images in [0, 1]; the result is clamped to [0, 1] on the input's device.
        `pooling` (backends with `pool_channels` only) injects statistics and receives the call's sums."""
        if degraded.ndim != 4 or degraded.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(degraded.shape)}")
        if condition is not None and not self.conditioned:
            raise ValueError(f"{self.name} is a blind model: it takes no strength condition (sigma / quality)")
        if pooling is not None and not self.pool_channels:
            raise ValueError(f"{self.name} takes no pooling statistics")
        inputs = degraded.to(self.device, torch.float32)
        if condition is not None:
            condition = condition.to(self.device, torch.float32)
        restored, problem = self._checked_run(inputs, condition, pooling)
        while problem is not None and self.precision != "fp32":
            self.note(f"{self.name}: the {self.precision} output was {problem}; recomputed in fp32 (kept)")
            self._set_precision("fp32")
            restored, problem = self._checked_run(inputs, condition, pooling)
        if problem == "constant image":
            self.note(f"{self.name}: an fp32 output was a constant image from a non-constant input")
        elif problem is not None:
            raise RuntimeError(f"{self.name} produced an output with {problem} values in fp32: the model file is bad")
        return restored.clamp(0, 1).to(degraded.device)

    def note(self, message: str) -> None:
        """Add a warning for the user once (tiles would otherwise repeat it)."""
        if message not in self.notes:
            self.notes.append(message)

    def _checked_run(
        self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None
    ) -> tuple[torch.Tensor, str | None]:
        try:
            restored = self._run(inputs, condition, pooling)
        except torch.cuda.OutOfMemoryError:
            raise  # for the caller (tiling retries with smaller tiles), not a precision problem
        except RuntimeError as err:  # e.g. an op without a half-precision kernel on this device
            if self.precision == "fp32":
                raise
            return inputs, f"an error ({str(err).splitlines()[0][:200]})"
        if restored.shape != inputs.shape:
            raise RuntimeError(f"{self.name} returned shape {tuple(restored.shape)} for input {tuple(inputs.shape)}")
        return restored, output_problem(restored, inputs)  # a flat input may give a flat output

    def _run(self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None) -> torch.Tensor:
        raise NotImplementedError

    def _set_precision(self, precision: str) -> None:
        raise NotImplementedError


_THREADS: list[int] = []  # set by set_cpu_threads


def cpu_threads() -> int:
    """Threads for CPU inference: `set_cpu_threads`'s number, else the cores this process may run on (its affinity
    mask, so `taskset -c 1` gives one thread), not the machine's."""
    if _THREADS:
        return _THREADS[-1]
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_cpu_threads(threads: int | None) -> int:
    """Use `threads` CPU threads (None or 0: `cpu_threads()`'s default) in torch and in backends opened afterwards."""
    if threads:
        _THREADS.append(threads)
    torch.set_num_threads(cpu_threads())
    return cpu_threads()
