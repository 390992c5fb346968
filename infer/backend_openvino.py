"""OpenVINO runtime for the ONNX files `export.onnx` writes: `OpenVinoBackend(path, precision)` (CPU only here).

OpenVINO reads the ONNX file itself and every input is fed on each call: `degraded`, the condition (all zeros,
blind, when none is given) and the pooled I/O inputs (local pooling when no statistics are requested). Files that
still carry defaults for the pooled inputs have them removed first: OpenVINO would fold them into constants.
fp32 computes in f32 (`INFERENCE_PRECISION_HINT`); bf16 is fast only on CPUs with native bf16 (AVX512_BF16 / AMX)
and is checked like every reduced-precision output (`infer.backend_base.Backend`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from infer.backend_base import DEFAULT_STRIDE, Backend, cpu_threads
from infer.backend_onnx import pooled_feeds
from model.condition import encode_condition
from model.pooling import POOLED_INPUTS, POOLED_OUTPUT, WHOLE_CORE, PoolRequest

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def strip_defaults(path: Path) -> tuple[bytes, int, dict[str, str]]:
    """The ONNX graph in `path` without initializers standing in for its pooled I/O inputs, P (the pooled channels,
    0 without pooled I/O) and the file's metadata."""
    import onnx

    proto = onnx.load(str(path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    for tensor in [t for t in proto.graph.initializer if t.name in POOLED_INPUTS]:
        proto.graph.initializer.remove(tensor)
    shapes = {value.name: value.type.tensor_type.shape.dim for value in proto.graph.input}
    channels = int(shapes["pooled_means"][0].dim_value) if all(name in shapes for name in POOLED_INPUTS) else 0
    return proto.SerializeToString(), channels, metadata


class OpenVinoBackend(Backend):
    """An ONNX file compiled by OpenVINO for the CPU (one compiled model; shapes may change between calls)."""

    def __init__(self, path: Path, precision: str = "fp32") -> None:
        import openvino as ov

        graph, channels, metadata = strip_defaults(path)
        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="openvino-") as work:
            (Path(work) / "model.onnx").write_bytes(graph)
            model = core.read_model(str(Path(work) / "model.onnx"))
        names = [port.get_any_name() for port in model.inputs]
        stride = int(metadata.get("stride", DEFAULT_STRIDE))
        super().__init__(f"openvino:{path.name}", torch.device("cpu"), stride, "condition" in names, precision)
        self.pool_channels = channels
        self.core, self.model = core, model
        self._set_precision(precision)

    def _set_precision(self, precision: str) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "INFERENCE_NUM_THREADS": cpu_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = self.core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def _run(self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None) -> torch.Tensor:
        feeds = {"degraded": np.ascontiguousarray(inputs.cpu().numpy(), dtype=np.float32)}
        if self.conditioned:
            rows = condition if condition is not None else encode_condition(len(inputs))  # all withheld: blind
            feeds["condition"] = rows.cpu().numpy().astype(np.float32)
        if self.pool_channels:
            request = pooling or PoolRequest(torch.tensor([WHOLE_CORE], dtype=torch.int64))
            feeds |= pooled_feeds(request, 0, len(inputs), self.pool_channels)
        results = self.request.infer(feeds)
        restored = torch.from_numpy(np.array(results[self.compiled.output("restored")]))
        if pooling is not None:
            pooling.sums = torch.from_numpy(np.array(results[self.compiled.output(POOLED_OUTPUT)])).float()
        return restored.float()
