"""TensorRT: `export_tensorrt` (ONNX -> engine, with its parity check) and `EngineRunner` (run an engine from torch).

`EngineRunner(path)(degraded)` takes `(N, 3, H, W)` float32 in [0, 1] on the CPU or a GPU and returns the restored
batch on the same device. Buffers are torch CUDA tensors (no pycuda); the engine runs on torch's current stream.
Every output is checked (`export.checks.output_problem`): a reduced-precision engine that gives NaN, inf or a
constant image (a known failure of FP16 NAFNet engines, TensorRT#4338, #3897) is replaced, with a warning, by an
FP32 engine built from the fp32 ONNX file recorded in the engine's sidecar (or by eager PyTorch when a
`fallback_model` is given); `runner.fell_back` then says what happened, for callers to report.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from export.checks import output_problem
from export.parity import ExportError, Source, check_parity, parity_inputs, reference, staged
from export.trt_build import build_engine, import_tensorrt, sidecar_path, write_sidecar
from export.trt_plan import TOLERANCE, Profile, Target, parity_shape, plan_precision


class OutputError(RuntimeError):
    """An engine produced an unusable output and no fallback could replace it."""


class EngineRunner:
    """Run a serialized TensorRT engine on torch tensors. Attributes: `path`, `precision` (what runs now),
    `fell_back` (None, or why and to what the runner switched), `profile` (min/opt/max input shapes)."""

    def __init__(
        self,
        engine_path: str | os.PathLike,
        device_index: int = 0,
        *,
        fallback_model: nn.Module | None = None,
        allow_fallback: bool = True,
    ) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TensorRT engine at {self.path}")
        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("a TensorRT engine needs a CUDA GPU; none is visible to torch")
        self.device = torch.device("cuda", device_index)
        sidecar = sidecar_path(self.path)
        self.info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        self.precision: str = self.info.get("precision", "unknown")
        self.fell_back: str | None = None
        self.fallback_model = fallback_model
        self.allow_fallback = allow_fallback
        self._eager: nn.Module | None = None
        self._load(self.path)

    def _load(self, path: Path) -> None:
        trt = self.trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                built = f" (built with TensorRT {self.info['tensorrt']} on {self.info['device']})" if self.info else ""
                raise RuntimeError(
                    f"{path} could not be loaded by TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"
                    f"{built}: engines only load on the TensorRT version and GPU architecture that built them"
                )
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.profile = Profile(*(tuple(shape) for shape in self._engine.get_tensor_profile_shape("degraded", 0)))
        self._out_dtype = _torch_dtype(self._engine.get_tensor_dtype("restored"))

    def __call__(self, degraded: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Restore `(N, 3, H, W)` float images; returns float32 of the same shape on `degraded`'s device."""
        if degraded.dim() != 4 or degraded.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(degraded.shape)}")
        if condition is not None and "condition" not in self.input_names and self._eager is None:
            raise ValueError(f"{self.path.name} is a blind engine (inputs {self.input_names}): it takes no condition")
        restored = self._restore(degraded, condition)
        problem = output_problem(restored, degraded)
        if problem is not None:
            self._fall_back(problem)
            restored = self._restore(degraded, condition)
            problem = output_problem(restored, degraded)
            if problem is not None:
                raise OutputError(f"the FP32 fallback also produced {problem}: the input or the model is at fault")
        return restored.to(degraded.device)

    def _restore(self, degraded: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        batch = degraded.to(self.device, torch.float32).contiguous()  # (N, 3, H, W)
        if self._eager is not None:
            with torch.inference_mode():
                return self._eager(batch, condition.to(self.device)) if condition is not None else self._eager(batch)
        low, high = self.profile.min, self.profile.max
        if not (low[2] <= batch.shape[2] <= high[2] and low[3] <= batch.shape[3] <= high[3]):
            raise ValueError(
                f"{batch.shape[2]}x{batch.shape[3]} is outside {self.path.name}'s profile ({low[2]}x{low[3]} to "
                f"{high[2]}x{high[3]}): tile the image or rebuild the engine with a larger --max-shape"
            )
        if "condition" in self.input_names:
            condition = torch.zeros(len(batch), 4) if condition is None else condition  # all zeros = blind
            condition = condition.to(self.device, torch.float32).contiguous()
        with torch.cuda.device(self.device):  # the execution context belongs to this device
            return self._enqueue(batch, condition, max_batch=high[0])

    def _enqueue(self, batch: torch.Tensor, condition: torch.Tensor | None, max_batch: int) -> torch.Tensor:
        """Run the engine on `batch` in chunks of at most `max_batch` images on torch's current stream."""
        stream = torch.cuda.current_stream(self.device)
        keep, outputs = [], []  # inputs stay referenced until the stream is synchronised
        for start in range(0, len(batch), max_batch):
            part = batch[start : start + max_batch]
            self._context.set_input_shape("degraded", tuple(part.shape))
            self._context.set_tensor_address("degraded", part.data_ptr())
            if condition is not None:
                cond = condition[start : start + max_batch]
                self._context.set_input_shape("condition", tuple(cond.shape))
                self._context.set_tensor_address("condition", cond.data_ptr())
                keep.append(cond)
            shape = tuple(self._context.get_tensor_shape("restored"))
            out = torch.empty(shape, device=self.device, dtype=self._out_dtype)
            self._context.set_tensor_address("restored", out.data_ptr())
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.path.name} on a {tuple(part.shape)} input")
            keep.append(part)
            outputs.append(out)
        stream.synchronize()
        return torch.cat(outputs).float()

    def _fall_back(self, problem: str) -> None:
        """Switch to FP32 after `problem` (or raise `OutputError` when that is not possible)."""
        reason = f"the {self.precision} engine {self.path.name} produced {problem}"
        if not self.allow_fallback or self.precision == "fp32" or self.fell_back is not None:
            raise OutputError(reason)
        if self.fallback_model is not None:
            self._eager = self.fallback_model.to(self.device).float().eval()
            used = "eager PyTorch in float32"
        else:
            onnx_path = Path(self.info.get("fp32_onnx") or "")
            if not self.info.get("fp32_onnx") or not onnx_path.is_file():
                raise OutputError(f"{reason}; no fp32 ONNX file is recorded next to the engine to build an FP32 one")
            fp32_path = self.path.with_name(f"{self.path.stem}.fp32{self.path.suffix}")
            if not _is_fp32_engine_of(fp32_path, onnx_path):
                profile = Profile(*(tuple(self.info["profile"][k]) for k in ("min", "opt", "max")))
                info = build_engine(
                    onnx_path, fp32_path, profile=profile, precision="fp32", device_index=self.device.index
                )
                write_sidecar(fp32_path, info)
            self._load(fp32_path)
            used = f"an FP32 engine ({fp32_path.name}) built from {onnx_path.name}"
        self.fell_back = f"{reason}; fell back to {used}"
        self.precision = "fp32"
        warnings.warn(self.fell_back, RuntimeWarning, stacklevel=3)


def _is_fp32_engine_of(engine_path: Path, onnx_path: Path) -> bool:
    sidecar = sidecar_path(engine_path)
    if not (engine_path.is_file() and sidecar.is_file()):
        return False
    info = json.loads(sidecar.read_text())
    return info.get("precision") == "fp32" and Path(info.get("onnx", "")) == onnx_path.resolve()


def _torch_dtype(trt_dtype) -> torch.dtype:
    names = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "INT8": torch.int8,
        "INT32": torch.int32,
        "BOOL": torch.bool,
    }
    return names[trt_dtype.name]


def export_tensorrt(
    out: str | os.PathLike,
    *,
    profile: Profile,
    onnx_path: str | os.PathLike | None = None,
    source: Source | None = None,
    precision: str | None = None,
    target: Target | None = None,
    tolerance: float | None = None,
    **build_options,
) -> float:
    """Build `out` and check its parity at an odd size inside the profile; returns the max abs difference.

    From `source`: exports `<out stem>.onnx` (fp32; kept for FP32 fallback builds) and, for fp16 on TensorRT >= 10,
    `<out stem>.fp16.onnx` to build a strongly typed engine from; parity against eager PyTorch. From `onnx_path`
    alone: parity against ONNX Runtime on that file (on an fp16 file, against its own float16 result).
    """
    from export.onnx import export_onnx, ort_session, read_metadata, run_session

    precision = plan_precision(precision, target)  # refusals first, before TensorRT or CUDA is looked for
    major = int(import_tensorrt().__version__.split(".")[0])
    out = Path(out)
    if onnx_path is None:
        if source is None:
            raise ExportError("export_tensorrt needs an ONNX file or a source checkpoint")
        onnx_path = fp32_onnx = out.with_suffix(".onnx")
        export_onnx(source, fp32_onnx, conditioned=None)  # the strength control when the model has it
        if precision == "fp16" and major >= 10:
            onnx_path = out.with_suffix(".fp16.onnx")
            export_onnx(source, onnx_path, fp16=True, conditioned=None)
    else:
        fp32_onnx = onnx_path if read_metadata(onnx_path).get("precision", "fp32") == "fp32" else None
    stride = source.stride if source is not None else int(read_metadata(onnx_path).get("stride") or 1)
    with staged(out) as partial:
        info = build_engine(
            onnx_path,
            partial,
            profile=profile,
            precision=precision,
            target=target,
            fp32_onnx=fp32_onnx,
            **build_options,
        )
        runner = EngineRunner(partial, build_options.get("device_index", 0), allow_fallback=False)
        shape = parity_shape(profile, stride)
        inputs = parity_inputs(shape, "condition" in runner.input_names)
        try:
            restored = runner(*inputs).cpu()
        except OutputError as err:
            raise ExportError(f"tensorrt {precision}: {err}") from err
        expected = reference(source, inputs) if source is not None else run_session(ort_session(onnx_path), inputs)
        tolerance = TOLERANCE[precision] if tolerance is None else tolerance
        diff = check_parity(f"tensorrt {precision}", restored, expected, tolerance)
    write_sidecar(out, {**info, "parity_max_abs_diff": diff, "parity_shape": list(shape)})
    return diff
