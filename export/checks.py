"""Sanity check of a restored batch, shared by every runner (TensorRT, ONNX Runtime, infer, demo).

Reduced-precision engines of NAFNet-style models are known to return NaN or black images (TensorRT#4338, #3897):
a runner calls `output_problem` on what it produced and falls back to FP32 or reports the failure.
"""

from __future__ import annotations

import torch

CONSTANT_SPREAD = 1e-6  # an image whose values all lie within this of each other is "constant"


def output_problem(restored: torch.Tensor, degraded: torch.Tensor | None = None) -> str | None:
    """What is wrong with a restored `(N, C, H, W)` (or `(C, H, W)`) batch: "NaN", "inf", "constant image", or None.

    "constant image": some image of more than one pixel has every value equal (within `CONSTANT_SPREAD`), as a
    black or grey failure output does. When `degraded` is given, an image whose input is itself constant is not
    flagged (a flat input may legitimately give a flat output).
    """
    if restored.numel() == 0:
        return None
    if torch.isnan(restored).any():
        return "NaN"
    if torch.isinf(restored).any():
        return "inf"
    if restored.shape[-1] * restored.shape[-2] <= 1:
        return None
    flat = _spread(restored) <= CONSTANT_SPREAD  # (N,)
    if degraded is not None and flat.any():
        flat &= _spread(degraded.to(restored.device)) > CONSTANT_SPREAD
    return "constant image" if bool(flat.any()) else None


def _spread(images: torch.Tensor) -> torch.Tensor:
    """max - min of each image, computed in float32: (N,)."""
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    per_image = batch.flatten(1).float()  # (N, C * H * W)
    return per_image.amax(dim=1) - per_image.amin(dim=1)
