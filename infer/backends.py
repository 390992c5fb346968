"""One call for every kind of model file: `open_backend(path, device, precision, runtime)` -> a `Backend`; no path:
the shipped model on the fastest runtime available (`infer.runtime.open_shipped`).

The file decides the backend: a project checkpoint (`.pt` / `.pth`, rebuilt by `model.load_model`), a TorchScript
archive (`.ts`, or a `.pt` / `.pth` that is one: detected from its zip layout), ONNX (`.onnx`, onnxruntime: CUDA
execution provider when the device is CUDA and onnxruntime has it, else CPU; or OpenVINO) or a TensorRT engine
(`.engine` / `.plan`, `export.tensorrt.EngineRunner`, CUDA only). Every backend maps `(N, 3, H, W)` float32 RGB in
[0, 1] to the same, clamped to [0, 1], on the input's device, and checks each output with
`export.checks.output_problem`: an output in reduced precision (fp16 / bf16) that is NaN, infinite or constant (from
a non-constant input) is computed again in fp32 and the backend stays in fp32, with the reason in `notes` (FP16
NAFNet engines in peer projects give NaN or black images). MPS always runs fp32 (fp16 gives black images there in
peer projects).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

import model as model_api
from export.checks import output_problem
from model.condition import encode_condition
from model.pooling import PoolRequest, attach_pooled_io, run_pooled
from pipeline.device import resolve_device

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_STRIDE = 16  # for files that do not record their stride: the default NAFNet's (and a multiple of ResNet's 1)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ts", ".jit")
ENGINE_SUFFIXES = (".engine", ".plan")


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
        self.chosen = ""  # how the runtime was chosen, for the shipped model (infer.runtime)
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


class TorchBackend(Backend):
    """An `nn.Module` or TorchScript module on a torch device, in fp32 / fp16 / bf16 (weights cast; LayerNorm2d
    computes its statistics in fp32 anyway, and the FiLM condition network stays in fp32). For reduced precision
    the fp32 weights are kept on the CPU, so the fallback restores them exactly (casting back would keep any
    weight that overflowed float16 as inf)."""

    def __init__(
        self, module: nn.Module, name: str, device: torch.device, precision: str, stride: int, conditioned: bool
    ) -> None:
        super().__init__(name, device, stride, conditioned, precision)
        if device.type == "mps" and precision != "fp32":
            self.notes.append(f"{name}: MPS runs fp32 only ({precision} gives black images there); using fp32")
            precision = "fp32"
        module = module.eval().float()
        reduced = precision != "fp32"
        self.fp32_state = {k: v.detach().clone() for k, v in module.state_dict().items()} if reduced else None
        self.module = module.to(device)
        self.pool_channels = attach_pooled_io(self.module, stride)
        self._set_precision(precision)

    def _set_precision(self, precision: str) -> None:
        self.precision, self.dtype = precision, PRECISIONS[precision]
        self.module.to(self.dtype)
        if precision == "fp32" and self.fp32_state is not None:
            self.module.load_state_dict(self.fp32_state)
            self.fp32_state = None
        for module in model_api.float32_modules(self.module):
            module.float()

    def _run(self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None) -> torch.Tensor:
        if self.conditioned and condition is None:
            condition = encode_condition(len(inputs), device=inputs.device)  # all withheld: blind
        with torch.no_grad():  # not inference_mode: its tensors refuse later in-place updates by callers
            args = (inputs.to(self.dtype),) if condition is None else (inputs.to(self.dtype), condition)
            if pooling is not None:
                return run_pooled(self.module, args, pooling).float()
            return self.module(*args).float()


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


class EngineBackend(Backend):
    """A TensorRT engine through `export.tensorrt.EngineRunner`, which checks its own outputs and replaces a failing
    reduced-precision engine by an fp32 one (`fell_back` says why; reported in `notes`). The engine's optimisation
    profile bounds the input size: larger images are tiled within `max_hw`."""

    def __init__(self, path: Path, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"{path.name} is a TensorRT engine: it needs a CUDA device, not {device}")
        from export.tensorrt import EngineRunner  # TensorRT is imported only for engine files

        self.runner = EngineRunner(path, device_index=device.index or 0)
        info = getattr(self.runner, "info", {}) or {}
        conditioned = "condition" in getattr(self.runner, "input_names", ())
        stride = int(info.get("stride") or (info.get("onnx_metadata") or {}).get("stride") or DEFAULT_STRIDE)
        super().__init__(f"tensorrt:{path.name}", device, stride, conditioned, str(self.runner.precision))
        profile = getattr(self.runner, "profile", None)
        self.max_hw = (int(profile.max[2]), int(profile.max[3])) if profile is not None else None
        self._fell_back_noted = False

    def _run(self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None) -> torch.Tensor:
        restored = self.runner(inputs, condition).float()
        self.precision = str(self.runner.precision)
        if self.runner.fell_back and not self._fell_back_noted:
            self.notes.append(f"{self.name}: {self.runner.fell_back}")
            self._fell_back_noted = True
        return restored

    def _set_precision(self, precision: str) -> None:
        raise RuntimeError(f"{self.name}: the {self.precision} engine output failed the check and it has no fp32 path")


def open_backend(
    path: str | Path | None, device: str = "auto", precision: str = "fp32", runtime: str = "auto"
) -> Backend:
    """Open a model file on `device` (auto: CUDA, MPS, CPU) in `precision`. None = the shipped model through the
    fastest runtime here (`infer.runtime.open_shipped`); an ONNX file runs with `runtime` (auto = onnxruntime)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if path is None:
        from infer.runtime import open_shipped

        return open_shipped(device, precision, runtime)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    torch_device = resolve_device(device)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from infer.runtime import open_onnx

        return open_onnx(path, torch_device, precision, runtime)
    if suffix in ENGINE_SUFFIXES:
        return EngineBackend(path, torch_device)
    if suffix not in CHECKPOINT_SUFFIXES and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path.name}: unknown model file type; expected a checkpoint (.pt/.pth), TorchScript (.ts), "
            f"ONNX (.onnx) or a TensorRT engine (.engine/.plan)"
        )
    if is_torchscript(path):
        extra = {"metadata.json": ""}  # written by export.torchscript: stride, conditioned, ...
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        metadata = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
        conditioned = len(module.forward.schema.arguments) > 2  # self, degraded[, condition]
        stride = int(metadata.get("stride", getattr(module, "stride", DEFAULT_STRIDE)))
        return TorchBackend(module, f"torchscript:{path.name}", torch_device, precision, stride, conditioned)
    if runtime not in ("auto", "torch"):
        raise ValueError(f"{path.name} is a PyTorch file: it runs with --runtime torch, not {runtime}")
    module = model_api.load_model(path)
    conditioned = model_api.is_conditioned(module)
    return TorchBackend(module, f"checkpoint:{path.name}", torch_device, precision, module.stride, conditioned)


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive: a zip with `code/` and `constants.pkl` (a `torch.save` zip has neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
