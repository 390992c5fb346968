"""ONNX export: one self-contained `.onnx` file, dynamic batch/height/width, checked with onnx.checker and ONNX Runtime.

Inputs: `degraded` (N, 3, H, W) float32 in [0, 1]; `condition` (N, 4) float32 (`model.condition`, an all-zero row
is blind) when the model has the strength control. Output: `restored`, same shape, float32. `fp16=True` computes
in float16 inside the graph with float32 I/O and float32 normalisation statistics (`norm_precisions` checks).
Model name, kwargs, step, stride, precision and inputs go into `metadata_props`.

A model with global pooling (NAFNet's channel attention) also gets the pooled I/O of `model.pooling`: inputs
`pooled_means`, `pooled_mix`, `pooled_core` and the output `pooled_sums`, so tiles can use whole-image statistics.
Every input is required: an initializer standing in as a default makes onnxruntime warn on every session.
`blind_feeds` gives the rest for a caller that has only `degraded`: a blind condition and local pooling.

Opset 17 (the default, what TensorRT 8.6 parses) is written by the TorchScript-based exporter, opset 18 and later by
the dynamo exporter (docs/export.md says why).
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
from model import float32_modules
from model.condition import COND_DIM
from model.pooling import POOLED_INPUTS, POOLED_OUTPUT, WHOLE_CORE, PoolRequest, attach_pooled_io, run_pooled

DEFAULT_OPSET = 17  # the newest TensorRT 8.6's ONNX parser accepts
EXPORT_SHAPE = (1, 3, 64, 64)
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


class OnnxGraph(nn.Module):
    """What is exported: the model with float32 I/O, computing in float16 inside when `half`."""

    def __init__(self, model: nn.Module, half: bool, pooled_io: bool = False) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.half = half
        self.pool_channels = attach_pooled_io(self.model, int(getattr(model, "stride", 1))) if pooled_io else 0
        if half:
            self.model.half()
            for module in float32_modules(self.model):
                module.float()  # e.g. NAFNet's condition MLP; the model casts its outputs to the features' dtype

    def forward(self, degraded: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`(degraded[, condition])`, then with pooled I/O `(pooled_means, pooled_mix, pooled_core)`."""
        inner = degraded.half() if self.half else degraded
        args = (inner, *rest[: len(rest) - 3]) if self.pool_channels else (inner, *rest)
        if not self.pool_channels:
            return self.model(*args).float()
        means, mix, core = rest[-3:]
        request = PoolRequest(core, means)
        restored = run_pooled(self.model, args, request, mix=mix)
        return restored.float(), request.sums


def export_onnx(
    source: Source,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    conditioned: bool | None = False,
    pooled_io: bool = False,
    static_shape: tuple[int, int, int, int] | None = None,
    tolerance: float | None = None,
) -> float:
    """Export, check and verify against eager; returns the worst max abs difference over the parity inputs.

    `conditioned`: the `condition` input (None: when the model has the strength control); `pooled_io`: the pooled
    I/O inputs and output (opset 17 only). `python -m export onnx` asks for both by default: the plain graph here is
    for callers that feed `degraded` alone. `static_shape` fixes the input shape (parity then runs at it only).
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"ONNX files end in .onnx, got {out.name}")
    conditioned = source.conditionable if conditioned is None else conditioned
    if conditioned and not source.conditionable:
        raise ExportError(f"{source.path} is a blind model: --conditioned needs a model built with conditioned=True")
    precision = "fp16" if fp16 else "fp32"
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    if pooled_io and opset >= 18:
        raise ExportError("pooled I/O is written by the opset-17 exporter only: use --opset 17")
    graph = OnnxGraph(source.model, half=fp16, pooled_io=pooled_io).eval()
    props = metadata(
        source,
        precision=precision,
        conditioned=conditioned,
        opset=opset,
        dynamic=static_shape is None,
        pooled_io=int(bool(graph.pool_channels)),
    )
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
        if graph.pool_channels:
            worst = max(worst, check_pooled_parity(session, source, shapes[0], conditioned, tolerance))
    return worst


def check_pooled_parity(session, source: Source, shape: tuple[int, ...], conditioned: bool, tolerance: float) -> float:
    """The pooled I/O against eager: the sums over a core, then the output with injected means (`model.pooling`)."""
    model = copy.deepcopy(source.model)
    attach_pooled_io(model, source.stride)
    inputs = parity_inputs(shape, conditioned, seed=2)
    height, width = shape[-2:]
    core = torch.tensor([[0, height // source.stride * source.stride, 0, width]] * shape[0], dtype=torch.int64)
    collect = PoolRequest(core)
    with torch.inference_mode():
        run_pooled(model, inputs, collect)
        padded_pixels = -(-height // source.stride) * source.stride * -(-width // source.stride) * source.stride
        inject = PoolRequest(core, collect.sums / padded_pixels * 0.8)  # means other than the input's own
        expected = run_pooled(model, inputs, inject)
    feeds = {name: tensor.numpy() for name, tensor in zip(["degraded", "condition"], inputs, strict=False)}
    feeds |= {"pooled_means": inject.means.numpy(), "pooled_mix": np.zeros(1, np.float32), "pooled_core": core.numpy()}
    restored, sums = (torch.from_numpy(array) for array in session.run(["restored", POOLED_OUTPUT], feeds))
    scale = float(inject.sums.abs().max()) or 1.0  # sums grow with the image: compare them relative to their size
    relative = float((sums - inject.sums).abs().max()) / scale
    print(f"parity onnx pooled sums: max relative diff {relative:.3g} (tolerance {tolerance:g})")
    if not relative <= tolerance:
        raise ExportError(f"onnx pooled sums differ from eager by {relative:.3g} (relative), above {tolerance:g}")
    return max(relative, check_parity("onnx injected means", restored, expected, tolerance))


def write_graph(
    graph: OnnxGraph, path: Path, opset: int, conditioned: bool, static_shape: tuple[int, ...] | None
) -> None:
    """Run the exporter for `opset` (see the module docstring for which one and why)."""
    example = parity_inputs(static_shape or EXPORT_SHAPE, conditioned, seed=1)
    names = ["degraded", "condition"][: len(example)]
    outputs = ["restored"]
    if graph.pool_channels:
        example += (torch.zeros(graph.pool_channels), torch.ones(1), torch.tensor([WHOLE_CORE], dtype=torch.int64))
        names, outputs = [*names, *POOLED_INPUTS], ["restored", POOLED_OUTPUT]
    if opset >= 18:
        batch = torch.export.Dim("batch", min=1, max=1024)
        image = {0: batch, 2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)}
        shapes = None if static_shape else {"degraded": image, "condition": {0: batch}}
        if shapes is not None and not conditioned:
            shapes.pop("condition")
        program = torch.onnx.export(
            graph,
            example,
            None,
            input_names=names,
            output_names=["restored"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
        return
    axes = None
    if static_shape is None:
        axes = {"degraded": {0: "batch", 2: "height", 3: "width"}, "restored": {0: "batch", 2: "height", 3: "width"}}
        if conditioned:
            axes["condition"] = {0: "batch"}
        if graph.pool_channels:
            axes["pooled_core"] = {0: "cores"}
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but is the one that writes opset 17
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=names,
            output_names=outputs,
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
        )


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


def blind_feeds(session, batch: int) -> dict[str, np.ndarray]:
    """Feeds for the inputs other than `degraded` of an onnxruntime `session`: a blind condition for `batch` images
    and local pooling over the whole input (the plain model)."""
    feeds: dict[str, np.ndarray] = {}
    for node in session.get_inputs():
        if node.name == "condition":
            feeds[node.name] = np.zeros((batch, COND_DIM), np.float32)
        elif node.name == "pooled_means":
            feeds[node.name] = np.zeros(node.shape[0], np.float32)
        elif node.name == "pooled_mix":
            feeds[node.name] = np.ones(1, np.float32)
        elif node.name == "pooled_core":
            feeds[node.name] = np.array([WHOLE_CORE] * batch, np.int64)
    return feeds


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
    """Run an ONNX Runtime session on `(degraded[, condition])` CPU tensors; returns `restored` as a tensor. Inputs
    left out get `blind_feeds`: no condition is blind restoration."""
    names = ["degraded", "condition"][: len(inputs)]
    if len(inputs) == 2 and "condition" not in {node.name for node in session.get_inputs()}:
        raise ExportError("the graph is blind: it takes no condition")
    feeds = blind_feeds(session, len(inputs[0]))
    pairs = zip(names, inputs, strict=True)
    feeds |= {name: np.ascontiguousarray(tensor.numpy(), dtype=np.float32) for name, tensor in pairs}
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
