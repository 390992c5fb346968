"""TensorRT engine builder (8.6, 10.x; 11 where it overlaps): ONNX -> serialized engine + the dict for its sidecar.

- One optimisation profile for `degraded` (min / opt / max N x 3 x H x W; `condition` follows the batch size).
- fp32: TF32 is switched off, so the engine matches eager float32. fp16 from an fp32 ONNX (weakly typed): the FP16
  flag, and every LayerNorm2d layer pinned to FP32 (layer precision and output types, OBEY_PRECISION_CONSTRAINTS).
  fp16 from an fp16 ONNX (`export onnx --fp16`, its norms cast to float32 inside the graph) on TensorRT >= 10: a
  STRONGLY_TYPED network, where the graph's own types decide (`trt_plan.plan_typing` says which and why).
  int8: IInt8EntropyCalibrator2 fed with degraded crops of the shards' validation split (`export.calibration`),
  norms pinned to FP32 as well.
- A timing cache file is read before and written after the build (rebuilds then skip most kernel timing).
The sidecar `<engine>.json` records the ONNX files, precision, profile and versions: `EngineRunner` reads it to
rebuild an FP32 engine (from `fp32_onnx`) when a reduced-precision one produces NaN or constant images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from export.calibration import calibration_batches
from export.parity import ExportError
from export.trt_plan import (
    Profile,
    Target,
    check_device,
    check_trt_version,
    is_norm_layer,
    plan_precision,
    plan_typing,
)


def import_tensorrt():
    """`import tensorrt`, or an `ExportError` that says why it is missing and where it comes from."""
    try:
        import tensorrt
    except ImportError as err:
        raise ExportError(
            "TensorRT is not installed (the PyPI 'tensorrt' packages are stubs that download from NVIDIA's index): "
            "install TensorRT 8.6 or 10.x with its Python bindings on the machine with the target GPU"
        ) from err
    return tensorrt


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(f"{engine_path}.json")


def onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props, or {} where the onnx package is absent (deployment machines)."""
    try:
        from export.onnx import read_metadata
    except ImportError:
        return {}
    return read_metadata(onnx_path)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    profile: Profile,
    precision: str | None = None,
    target: Target | None = None,
    calib_shards: str | os.PathLike | None = None,
    calib_batches: int = 16,
    calib_cache: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
    device_index: int = 0,
    fp32_onnx: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build and write an engine; returns the dict for its sidecar. Refusals raise `PlanError`. `fp32_onnx` is the
    fp32 export recorded for FP32 fallback builds (default: `onnx_path` when that graph is fp32)."""
    precision = plan_precision(precision, target)
    trt = import_tensorrt()
    onnx_path, meta = Path(onnx_path).resolve(), onnx_metadata(Path(onnx_path))
    strongly_typed = _check_build(trt, precision, target, meta.get("precision", "fp32"), device_index)
    fp32_onnx = fp32_onnx or (onnx_path if meta.get("precision", "fp32") == "fp32" else None)
    with torch.cuda.device(device_index):
        builder, network, parser = _parse(trt, onnx_path, strongly_typed)  # the parser owns the weights: keep it
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        config.add_optimization_profile(_profile(builder, profile, inputs))
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        pinned = 0 if strongly_typed else _set_precision(trt, builder, network, config, precision, target)
        calibrator = None  # referenced until the build ends
        if precision == "int8":
            calibrator = _calibrate(trt, builder, config, profile, inputs, calib_shards, calib_batches, calib_cache)
        _load_timing_cache(config, timing_cache)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError("TensorRT failed to build the engine (see its log above)")
        if timing_cache is not None:
            Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
        Path(engine_path).write_bytes(bytes(serialized))
    del parser, calibrator
    return {
        "onnx": str(onnx_path),
        "fp32_onnx": str(Path(fp32_onnx).resolve()) if fp32_onnx else None,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
        "pinned_fp32_layers": pinned,
        "tensorrt": trt.__version__,
        "target": target.name if target else None,
        "device": torch.cuda.get_device_name(device_index),
        "compute_capability": list(torch.cuda.get_device_capability(device_index)),
        "onnx_metadata": meta,
    }


def _check_build(trt, precision: str, target: Target | None, onnx_precision: str, device_index: int) -> bool:
    """Version, typing and device checks before a build; returns whether the network is strongly typed."""
    strongly_typed, warnings = plan_typing(trt.__version__, precision, onnx_precision)
    for warning in check_trt_version(trt.__version__, target) + warnings:
        print(f"warning: {warning}")
    if target is not None and precision == "int8":
        print(f"note: {target.int8_note}")
    if not torch.cuda.is_available():
        raise ExportError("building a TensorRT engine needs a CUDA GPU (the engine is built for the GPU it runs on)")
    check_device(torch.cuda.get_device_capability(device_index), target)
    return strongly_typed


def _parse(trt, onnx_path: Path, strongly_typed: bool):
    """(builder, network, parser) with the ONNX graph parsed; parser errors become an `ExportError`."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    return builder, network, parser


def write_sidecar(engine_path: str | os.PathLike, info: dict[str, Any]) -> None:
    sidecar_path(engine_path).write_text(json.dumps(info, indent=2))


def _network_flags(trt, strongly_typed: bool) -> int:
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit batch is the 8.x default
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _profile(builder, profile: Profile, inputs: list[str], fixed: tuple[int, ...] | None = None):
    """An optimisation profile over `inputs` ("degraded", optionally "condition"); `fixed` gives min = opt = max."""
    shapes = (fixed, fixed, fixed) if fixed else (profile.min, profile.opt, profile.max)
    trt_profile = builder.create_optimization_profile()
    for name in inputs:
        if name == "degraded":
            trt_profile.set_shape(name, *shapes)
        elif name == "condition":
            trt_profile.set_shape(name, *((shape[0], 4) for shape in shapes))
        else:
            raise ExportError(f"unexpected network input {name!r}: expected 'degraded' and optionally 'condition'")
    return trt_profile


def _set_precision(trt, builder, network, config, precision: str, target: Target | None) -> int:
    """Builder flags for a weakly typed network; pins LayerNorm2d layers to FP32 in reduced precision. Returns the
    number of pinned layers."""
    if precision == "fp32":
        return 0
    use_fp16 = precision == "fp16" or (target is None or target.fp16_refusal is None)
    if precision == "fp16" and not getattr(builder, "platform_has_fast_fp16", True):
        print("warning: this GPU has no fast FP16; the FP16 engine may be slower than FP32")
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE}
    norm_type = getattr(trt.LayerType, "NORMALIZATION", None)
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in skip or not (is_norm_layer(layer.name) or layer.type == norm_type):
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in (trt.float32, trt.float16):
                layer.set_output_type(output, trt.float32)
        pinned += 1
    if pinned == 0:
        print("warning: no LayerNorm2d layers found to pin to FP32 (layer names without '/norm1/' or '/norm2/')")
    return pinned


def _calibrate(trt, builder, config, profile: Profile, inputs, shards, num_batches: int, cache):
    """Attach an entropy calibrator (calibration runs at the profile's optimum shape)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ExportError(f"TensorRT {trt.__version__} has no implicit INT8 calibration: quantise the ONNX explicitly")
    cache = Path(cache) if cache else None
    if shards is None and not (cache and cache.is_file()):
        raise ExportError("an int8 build needs --calib-shards DIR (the shards' val split) or an existing --calib-cache")
    batches = calibration_batches(shards, profile.opt, num_batches) if shards is not None else []
    calibrator = make_calibrator(trt, batches, profile.opt[0], cache)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(_profile(builder, profile, inputs, fixed=profile.opt))
    return calibrator


def make_calibrator(trt, batches: list, batch_size: int, cache: Path | None):
    """An IInt8EntropyCalibrator2 serving `batches` ((N, 3, H, W) float32 arrays) from torch CUDA buffers."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pending = list(batches)
            self.buffers: list[torch.Tensor] = []  # kept alive until the next batch replaces them

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self.pending:
                return None
            degraded = torch.from_numpy(self.pending.pop(0)).cuda()
            condition = torch.zeros(degraded.shape[0], 4, device=degraded.device)  # blind
            self.buffers = [degraded if name == "degraded" else condition for name in names]
            torch.cuda.synchronize()
            return [int(buffer.data_ptr()) for buffer in self.buffers]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return Calibrator()


def _load_timing_cache(config, path: str | os.PathLike | None) -> None:
    """Give the builder a timing cache read from `path` when it exists (an empty one otherwise)."""
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), False):  # False: never reuse another GPU's timings
        return
    print(f"warning: timing cache {path} was written by another TensorRT or GPU; starting an empty one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
