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
from model.condition import FiLM, encode_condition


class NAFNet(nn.Module):
    """U-Net of NAFBlocks: stride-2 conv down, 1x1 conv + PixelShuffle up, skips added, global residual.

    `enc_blocks[i]` / `dec_blocks[i]` NAFBlocks sit at level i (channels `width * 2**i`), `middle_blocks` at the
    bottom. Inputs are padded (replicate) to a multiple of `stride = 2**levels` inside `forward` and cropped back.
    Unlike NAFNet, the output conv starts at zero, so an untrained model returns its input exactly: a good start
    for restoration, where the target is close to the input. Defaults (width 16, one block per level) are sized
    for CPU training: ~1M parameters. `conditioned=True` adds the strength control (`model.condition`): FiLM at the
    input of every encoder level, the middle and every decoder level; `forward(degraded)` alone is then blind.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        enc_blocks: Sequence[int] = (1, 1, 1, 1),
        middle_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        conditioned: bool = False,
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
        levels = [width * 2**i for i in range(len(enc_blocks))]
        self.film = FiLM([*levels, channels * 2 ** len(enc_blocks), *reversed(levels)]) if conditioned else None

    def forward(self, degraded: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Restore `(N, C, H, W)` images; the result has the same shape and dtype. `condition`: `(N, 4)` rows from
        `model.condition.encode_condition` (only for a conditioned model; None = blind)."""
        height, width = degraded.shape[-2:]
        padded = F.pad(degraded, (0, -width % self.stride, 0, -height % self.stride), mode="replicate")
        films = iter(self._films(degraded, condition))
        feats = self.intro(padded)
        skips = []
        for blocks, down in zip(self.encoders, self.downs, strict=True):
            feats = blocks(_modulate(feats, next(films)))
            skips.append(feats)
            feats = down(feats)
        feats = self.middle(_modulate(feats, next(films)))
        for up, blocks, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            feats = blocks(_modulate(up(feats) + skip, next(films)))
        restored = padded + self.ending(feats)
        return restored[:, :, :height, :width]

    @property
    def conditioned(self) -> bool:
        """True when built with `conditioned=True`: `forward(degraded, condition)` then takes a condition."""
        return self.film is not None

    def float32_modules(self) -> list[nn.Module]:
        """The condition MLP stays float32 under fp16 (its scales are cast to the features' dtype)."""
        return [self.film] if self.film is not None else []

    def _films(self, degraded: torch.Tensor, condition: torch.Tensor | None) -> list:
        if self.film is None:
            if condition is not None:
                raise ValueError("this model is not conditioned: build it with conditioned=True to pass a condition")
            return [None] * (2 * len(self.encoders) + 1)
        if condition is None:
            condition = encode_condition(degraded.shape[0], device=degraded.device)
        return self.film(condition)


def _modulate(feats: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if film is None:
        return feats
    scale, shift = film
    return feats * (1 + scale.to(feats.dtype)) + shift.to(feats.dtype)
