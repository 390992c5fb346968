"""Shared layers: channel LayerNorm, SimpleGate, simplified channel attention, NAFBlock, plain residual block.

All layers take and return `(N, C, H, W)` feature maps. Everything is built from plain differentiable ops (no custom
autograd Function), so the models export to ONNX opset 17 as they are (unlike NAFNet's own LayerNorm, NAFNet#30).
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel dimension of `(N, C, H, W)` maps, with per-channel affine.

    Statistics and the affine transform are computed in float32 whatever the input dtype (half inputs, autocast),
    then cast back: the variance of a half-precision map overflows or loses precision, which is what gives FP16
    TensorRT engines of NAFNet NaN or black outputs. Equal to `F.layer_norm` over C after moving C last.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        mean = x32.mean(dim=1, keepdim=True)  # (N, 1, H, W)
        centred = x32 - mean
        var = centred.pow(2).mean(dim=1, keepdim=True)  # biased, as layer_norm
        normed = centred * torch.rsqrt(var + self.eps)
        out = normed * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return out.to(x.dtype)


class SimpleGate(nn.Module):
    """NAFNet's activation: split channels in two halves and multiply them (C -> C / 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second


class ChannelAttention(nn.Module):
    """Simplified channel attention: scale each channel by a 1x1 conv of the globally pooled features (no sigmoid)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(self.pool(x))


class NAFBlock(nn.Module):
    """NAFNet block: a gated depthwise-conv mixer and a gated 1x1 feed-forward, each a scaled residual branch.

    Mixer: norm -> 1x1 (C -> dw_expand C) -> depthwise 3x3 -> SimpleGate -> channel attention -> 1x1 back to C.
    Feed-forward: norm -> 1x1 (C -> ffn_expand C) -> SimpleGate -> 1x1 back to C.
    The branch scales `beta` and `gamma` start at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw_channels = channels * dw_expand
        ffn_channels = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.mix = nn.Sequential(
            nn.Conv2d(channels, dw_channels, kernel_size=1),
            nn.Conv2d(dw_channels, dw_channels, kernel_size=3, padding=1, groups=dw_channels),
            SimpleGate(),
            ChannelAttention(dw_channels // 2),
            nn.Conv2d(dw_channels // 2, channels, kernel_size=1),
        )
        self.norm2 = LayerNorm2d(channels)
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, ffn_channels, kernel_size=1),
            SimpleGate(),
            nn.Conv2d(ffn_channels // 2, channels, kernel_size=1),
        )
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.beta * self.mix(self.norm1(x))
        return x + self.gamma * self.ffn(self.norm2(x))


class ResidualBlock(nn.Module):
    """Plain residual block for the ResNet baseline: x + conv3x3(relu(conv3x3(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def zero_init_(conv: nn.Conv2d) -> nn.Conv2d:
    """Zero a conv's weight and bias in place: used on the output conv so an untrained model is the identity."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
