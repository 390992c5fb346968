"""Light residual CNN baseline: conv head, plain residual blocks, conv tail, global residual; no downsampling.

Input and output: `(N, C, H, W)` images (RGB in [0, 1] for this project), any H and W, same shape and dtype out.
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import ResidualBlock, zero_init_


class ResNet(nn.Module):
    """`num_blocks` residual blocks of `width` channels at full resolution; output = input + predicted correction.

    The tail conv starts at zero, so an untrained model returns its input exactly. Works at stride 1 (`stride = 1`):
    any H and W, no padding needed. Defaults: ~113k parameters, ~112 GMACs per megapixel.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, num_blocks: int = 6) -> None:
        super().__init__()
        self.stride = 1
        self.conditioned = False
        self.head = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(num_blocks)))
        self.tail = zero_init_(nn.Conv2d(width, in_channels, kernel_size=3, padding=1))

    def float32_modules(self) -> list[nn.Module]:
        return []

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        """Restore `(N, C, H, W)` images; the result has the same shape and dtype."""
        return degraded + self.tail(self.body(self.head(degraded)))
