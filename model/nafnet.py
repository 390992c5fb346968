"""NAFNet-style U-Net for restoration (Chen et al., "Simple Baselines for Image Restoration", 2022).

Input and output: `(N, C, H, W)` images (RGB in [0, 1] for this project), any H and W; the output has the input's
shape and dtype. The network predicts a correction that is added to its input (residual learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import NAFBlock, zero_init_


class NAFNet(nn.Module):
    """U-Net of NAFBlocks: stride-2 conv down, 1x1 conv + PixelShuffle up, skips added, global residual.

    `enc_blocks[i]` / `dec_blocks[i]` NAFBlocks sit at level i (channels `width * 2**i`), `middle_blocks` at the
    bottom. Inputs are padded (replicate) to a multiple of `stride = 2**levels` inside `forward` and cropped back.
    Unlike NAFNet, the output conv starts at zero, so an untrained model returns its input exactly: a good start
    for restoration, where the target is close to the input. Defaults (width 16, one block per level) are sized
    for CPU training: ~1M parameters.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        enc_blocks: Sequence[int] = (1, 1, 1, 1),
        middle_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks and dec_blocks need one entry per level, got {enc_blocks}, {dec_blocks}")
        self.stride = 2 ** len(enc_blocks)
        self.intro = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = width
        for num in enc_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(num))))
            self.downs.append(nn.Conv2d(channels, 2 * channels, kernel_size=2, stride=2))
            channels *= 2
        self.middle = nn.Sequential(*(NAFBlock(channels) for _ in range(middle_blocks)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for num in reversed(dec_blocks):
            self.ups.append(
                nn.Sequential(nn.Conv2d(channels, 2 * channels, kernel_size=1, bias=False), nn.PixelShuffle(2))
            )
            channels //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(num))))
        self.ending = zero_init_(nn.Conv2d(width, in_channels, kernel_size=3, padding=1))

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        """Restore `(N, C, H, W)` images; the result has the same shape and dtype."""
        height, width = degraded.shape[-2:]
        padded = F.pad(degraded, (0, -width % self.stride, 0, -height % self.stride), mode="replicate")
        feats = self.intro(padded)
        skips = []
        for blocks, down in zip(self.encoders, self.downs, strict=True):
            feats = blocks(feats)
            skips.append(feats)
            feats = down(feats)
        feats = self.middle(feats)
        for up, blocks, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            feats = blocks(up(feats) + skip)
        restored = padded + self.ending(feats)
        return restored[:, :, :height, :width]
