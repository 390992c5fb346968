"""Test-time variants of a restoration model: local pooling windows (TLC) and the x8 flip/rotate self-ensemble.

NAFNet's channel attention pools the features of its whole input. In training the input is a patch (96 px), at test
time a whole photo: `with_local_pooling(model, window)` makes each attention pool a `window` x `window` box of input
pixels around each position instead, the statistics a training patch sees (Test-time Local Converter, NAFNet's TLC).
`SelfEnsemble` averages the model over the 8 flips and quarter turns of its input (8x the cost).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import ChannelAttention
from model.nafnet import NAFNet


class LocalPool(nn.Module):
    """Per cell, the mean of the features over a `window` x `window` box of cells centred on it, clipped at the
    borders; from an integral image, so the cost does not grow with the window. (N, C, h, w) -> (N, C, h, w)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = max(1, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.window >= max(height, width):  # the box covers everything: the global mean, as the plain pool
            return x.mean(dim=(2, 3), keepdim=True)
        integral = F.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # double: no cancellation in the sums
        y0, y1 = self._bounds(height, x.device)
        x0, x1 = self._bounds(width, x.device)
        rows_low, rows_high = integral[:, :, y0], integral[:, :, y1]
        sums = rows_high[..., x1] - rows_high[..., x0] - rows_low[..., x1] + rows_low[..., x0]
        area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
        return (sums / area).to(x.dtype)

    def _bounds(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.arange(size, device=device) - self.window // 2
        return start.clamp(0, size), (start + self.window).clamp(0, size)


def with_local_pooling(model: NAFNet, window: int) -> NAFNet:
    """A copy of `model` whose channel attention pools `window` x `window` input pixels around each position."""
    local = copy.deepcopy(model)
    levels = len(local.encoders)
    stages = [(blocks, 2**i) for i, blocks in enumerate(local.encoders)] + [(local.middle, 2**levels)]
    stages += [(blocks, 2 ** (levels - 1 - i)) for i, blocks in enumerate(local.decoders)]
    for blocks, factor in stages:  # factor: input pixels per feature cell at that level
        for attention in (m for m in blocks.modules() if isinstance(m, ChannelAttention)):
            attention.pool = LocalPool(max(1, round(window / factor)))
    return local


class SelfEnsemble(nn.Module):
    """The mean of `model` over the 8 flips and quarter turns of its input, each turned back (the same interface)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, degraded: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.zeros_like(degraded, dtype=torch.float32)
        for flip in (False, True):
            flipped = degraded.flip(-1) if flip else degraded
            for turns in range(4):
                restored = self.model(torch.rot90(flipped, turns, (-2, -1)), condition).float()
                restored = torch.rot90(restored, -turns, (-2, -1))
                total += restored.flip(-1) if flip else restored
        return (total / 8).to(degraded.dtype)
