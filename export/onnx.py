"""ONNX export: one self-contained `.onnx` file, dynamic batch/height/width, checked with onnx.checker and ONNX Runtime.

Input `degraded` (N, 3, H, W) float32 in [0, 1] (plus `condition` (N, 4) float32 with `--conditioned`), output
`restored`, same shape, float32. `fp16=True` stores weights and computes activations in float16 inside the graph
(casts at its two ends keep the I/O float32), while LayerNorm2d's `.float()` casts keep the normalisation
statistics in float32 (`norm_precisions` reads that back from the graph). Model name, kwargs, step, stride,
precision and inputs go into `metadata_props`.

Exporter choice, by measurement (torch 2.13, onnx 1.23): the default dynamo exporter writes opset 18 and its
down-conversion to 17 fails on this model ("No Adapter To Version $17 for Pad") and silently leaves opset 18,
which TensorRT 8.6 (the last release for Pascal GPUs) does not parse. Opset <= 17 therefore uses the TorchScript-
based exporter, which writes opset 17 natively; opset >= 18 uses the dynamo exporter (needs onnxscript).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.parity import (
    PARITY_SHAPE,
    SECOND_SHAPE,
    ExportError,
    Source,
    check_parity,
    metadata,
    parity_inputs,
    reference,
    staged,
)
from export.trt_plan import is_norm_layer

DEFAULT_OPSET = 17  # the newest TensorRT 8.6's ONNX parser accepts
EXPORT_SHAPE = (1, 3, 64, 64)
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


class OnnxGraph(nn.Module):
    """What is exported: the model with float32 I/O, computing in float16 inside when `half`."""

    def __init__(self, model: nn.Module, half: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.half = half
        if half:
            self.model.half()
            film = getattr(self.model, "film", None)
            if film is not None:
                film.float()  # the condition MLP stays float32; NAFNet casts its scales to the features' dtype

    def forward(self, degraded: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        inner = degraded.half() if self.half else degraded
        restored = self.model(inner) if condition is None else self.model(inner, condition)
        return restored.float()


def export_onnx(
    source: Source,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    conditioned: bool = False,
    static_shape: tuple[int, int, int, int] | None = None,
    tolerance: float | None = None,
) -> float:
    """Export, check and verify against eager; returns the worst max abs difference over the parity inputs.

    `static_shape` exports a graph fixed to that input shape (parity then runs at that shape only).
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"ONNX files end in .onnx, got {out.name}")
    if conditioned and not source.conditionable:
        raise ExportError(f"{source.path} is a blind model: --conditioned needs a model built with conditioned=True")
    precision = "fp16" if fp16 else "fp32"
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    graph = OnnxGraph(source.model, half=fp16).eval()
    props = metadata(source, precision=precision, conditioned=conditioned, opset=opset, dynamic=static_shape is None)
    with staged(out) as partial:
        write_graph(graph, partial, opset, conditioned, static_shape)
        finish(partial, opset, props)
        shapes = [static_shape] if static_shape else [PARITY_SHAPE, SECOND_SHAPE]
        session = ort_session(partial)
        worst = 0.0
        for shape in shapes:
            inputs = parity_inputs(shape, conditioned)
            restored = run_session(session, inputs)
            worst = max(worst, check_parity(f"onnx {precision}", restored, reference(source, inputs), tolerance))
    return worst


def write_graph(
    graph: OnnxGraph, path: Path, opset: int, conditioned: bool, static_shape: tuple[int, ...] | None
) -> None:
    """Run the exporter for `opset` (see the module docstring for which one and why)."""
    example = parity_inputs(static_shape or EXPORT_SHAPE, conditioned, seed=1)
    names = ["degraded", "condition"][: len(example)]
    if opset >= 18:
        batch = torch.export.Dim("batch", min=1, max=1024)
        image = {0: batch, 2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)}
        shapes = None if static_shape else {"degraded": image, "condition": {0: batch}}
        if shapes is not None and not conditioned:
            shapes.pop("condition")
        program = torch.onnx.export(
            graph, example, None, input_names=names, output_names=["restored"], opset_version=opset,
            dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False,
        )  # fmt: skip
        program.save(str(path), external_data=False)
        return
    axes = None
    if static_shape is None:
        axes = {"degraded": {0: "batch", 2: "height", 3: "width"}, "restored": {0: "batch", 2: "height", 3: "width"}}
        if conditioned:
            axes["condition"] = {0: "batch"}
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but is the one that writes opset 17
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph, example, str(path), input_names=names, output_names=["restored"], opset_version=opset,
            dynamic_axes=axes, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


def finish(path: Path, opset: int, props: dict[str, str]) -> None:
    """Check the opset actually written, store metadata, keep the weights inside the one file, run onnx.checker."""
    proto = onnx.load(str(path))
    written = max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if written != opset:
        raise ExportError(f"the exporter wrote opset {written}, not the {opset} asked for")
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    stray = path.with_name(path.name + ".data")
    stray.unlink(missing_ok=True)
    onnx.checker.check_model(str(path), full_check=True)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def ort_session(path: str | os.PathLike, threads: int = 0, level: str = "all", providers: list[str] | None = None):
    """An ONNX Runtime session (CPU unless `providers` says otherwise); `threads` 0 lets ORT choose, `level` is the
    graph optimisation level: "disable", "basic", "extended" or "all"."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def run_session(session, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Run an ONNX Runtime session on `(degraded[, condition])` CPU tensors; returns `restored` as a tensor."""
    names = [node.name for node in session.get_inputs()]
    if len(names) != len(inputs):
        raise ExportError(f"the graph takes inputs {names}, {len(inputs)} given")
    feeds = {
        name: np.ascontiguousarray(tensor.numpy(), dtype=np.float32) for name, tensor in zip(names, inputs, strict=True)
    }
    return torch.from_numpy(session.run(["restored"], feeds)[0])


def norm_precisions(path: str | os.PathLike) -> dict[str, set[str]]:
    """Element types entering the ReduceMean nodes of each LayerNorm2d (by node scope), from ONNX shape inference:
    how a test or a reader confirms that an fp16 graph keeps its normalisation statistics in float32."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {value.name: value.type.tensor_type.elem_type for value in proto.graph.value_info}
    types.update({value.name: value.type.tensor_type.elem_type for value in proto.graph.input})
    found: dict[str, set[str]] = {}
    for node in proto.graph.node:
        if node.op_type == "ReduceMean" and is_norm_layer(node.name):
            scope = node.name.rsplit("/", 1)[0]
            elem = onnx.helper.tensor_dtype_to_np_dtype(types[node.input[0]]).name
            found.setdefault(scope, set()).add(elem)
    return found
