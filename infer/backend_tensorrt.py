"""TensorRT engines (`.engine` / `.plan`, CUDA only): `EngineBackend`."""

from __future__ import annotations

from pathlib import Path

import torch

from infer.backend_base import DEFAULT_STRIDE, Backend
from model.pooling import PoolRequest


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
