"""Checkpoints and TorchScript archives on a torch device: `TorchBackend`."""

from __future__ import annotations

import torch
from torch import nn

import model as model_api
from infer.backend_base import PRECISIONS, Backend
from model.condition import encode_condition
from model.pooling import PoolRequest, attach_pooled_io, run_pooled


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
