"""ONNX files through onnxruntime: `OnnxBackend(path, device, precision)` (CUDA execution provider when the device
is CUDA and onnxruntime has it, else CPU), and `float32_graph`, the fp32 widening an fp16 graph falls back to."""

from __future__ import annotations

from pathlib import Path

import torch

from infer.backend_base import DEFAULT_STRIDE, Backend, cpu_threads
from model.condition import encode_condition
from model.pooling import POOLED_INPUTS, POOLED_OUTPUT, PoolRequest


class OnnxBackend(Backend):
    """An ONNX file run by onnxruntime, in the precision its graph computes in (the `precision` metadata written by
    `export.onnx`, else the input type). An fp16 graph whose output fails the check is converted to fp32 in memory
    (float16 weights, casts and types widened) and run again. A file with a `condition` input has the strength
    control; the stride comes from the file's metadata (`stride`) when recorded, else `DEFAULT_STRIDE`."""

    def __init__(self, path: Path, device: torch.device, precision: str) -> None:
        import onnxruntime as ort

        self.path, notes = path, []
        self.providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                notes.append("onnxruntime here has no CUDA execution provider: the ONNX model runs on the CPU")
        elif device.type == "mps":
            notes.append("onnxruntime has no MPS provider: the ONNX model runs on the CPU")
        self._open_session(str(path))
        on_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        if device.type == "cuda" and not on_cuda and not notes:
            notes.append("onnxruntime could not start its CUDA provider: the ONNX model runs on the CPU")
        inputs = self.session.get_inputs()
        metadata = self.session.get_modelmeta().custom_metadata_map
        file_precision = metadata.get("precision") or ("fp16" if inputs[0].type == "tensor(float16)" else "fp32")
        if precision != file_precision:
            notes.append(f"{path.name} holds a {file_precision} graph: it runs in {file_precision}, not {precision}")
        stride = int(metadata.get("stride", DEFAULT_STRIDE))
        conditioned = "condition" in self.inputs
        super().__init__(
            f"onnx:{path.name}", device if on_cuda else torch.device("cpu"), stride, conditioned, file_precision
        )
        self.notes.extend(notes)
        self.pool_channels = self.pooled_io_channels
        shape = inputs[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.fixed_hw = (shape[2], shape[3])

    def _open_session(self, model: str | bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        self.session = ort.InferenceSession(model, options, providers=self.providers)
        self.inputs = {
            i.name: "float16" if i.type == "tensor(float16)" else "float32" for i in self.session.get_inputs()
        }
        outputs = [o.name for o in self.session.get_outputs()]
        declared = [*self.session.get_inputs(), *self.session.get_overridable_initializers()]  # older files: defaults
        inputs = {i.name: i.shape for i in declared}
        has_io = all(name in inputs for name in POOLED_INPUTS) and POOLED_OUTPUT in outputs
        self.pooled_io_channels = int(inputs["pooled_means"][0]) if has_io else 0

    def _run(self, inputs: torch.Tensor, condition: torch.Tensor | None, pooling: PoolRequest | None) -> torch.Tensor:
        if self.conditioned and condition is None:
            condition = encode_condition(len(inputs))  # all withheld: blind
        step = self.fixed_batch or len(inputs)
        outputs, sums = [], []
        names = ["restored"] if pooling is None else ["restored", POOLED_OUTPUT]
        for start in range(0, len(inputs), step):
            tensors = {"degraded": inputs[start : start + step]}
            if self.conditioned:
                tensors["condition"] = condition[start : start + step]
            feeds = {name: tensor.cpu().numpy().astype(self.inputs[name]) for name, tensor in tensors.items()}
            if self.pool_channels:
                request = pooling or PoolRequest.whole(len(tensors["degraded"]))  # local pooling: the plain model
                feeds |= pooled_feeds(request, start if pooling else 0, step, self.pool_channels)
            results = self.session.run(names, feeds)
            outputs.append(torch.from_numpy(results[0]).float())
            sums += [torch.from_numpy(results[1]).float()] if pooling is not None else []
        if pooling is not None:
            pooling.sums = torch.stack(sums).sum(0)
        return torch.cat(outputs).to(inputs.device)

    def _set_precision(self, precision: str) -> None:
        if self.precision != "fp16" or precision != "fp32":
            raise RuntimeError(f"{self.name}: cannot run a {self.precision} graph in {precision}")
        self._open_session(float32_graph(self.path))
        self.precision = "fp32"


def pooled_feeds(pooling: PoolRequest, start: int, step: int, channels: int) -> dict:
    """The ONNX feeds of a pooled I/O request for inputs `start : start + step` of a call."""
    import numpy as np

    means = pooling.means if pooling.means is not None else torch.zeros(channels)
    return {
        "pooled_means": means.float().numpy(),
        "pooled_core": pooling.cores[start : start + step].numpy(),
        "pooled_mix": np.array([1.0 if pooling.means is None else 0.0], dtype=np.float32),
    }


def float32_graph(path: Path) -> bytes:
    """The ONNX graph in `path` with every float16 widened to float32 (weights, constants, casts, declared types)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    proto = onnx.load(str(path))

    def widen(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))

    for tensor in proto.graph.initializer:
        widen(tensor)
    for node in proto.graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT
            if attribute.type == onnx.AttributeProto.TENSOR:
                widen(attribute.t)
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return proto.SerializeToString()
