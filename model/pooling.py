"""Whole-image channel statistics for tiled inference of models with global pooling (NAFNet's channel attention).

A NAFBlock scales its channels by a 1x1 conv of the features' mean over the whole image; a tile only sees its own
mean, which is what makes tiled NAFNet output drift from the untiled one (docs/infer.md measures it). The
statistics travel as tensors, so eager checkpoints and exported graphs share one mechanism ("pooled I/O"):

- `pooled_means` `(P,)` float32: one mean per channel of every pool, concatenated in forward order;
- `pooled_mix` `(1,)` float32: 1 = each input pools its own features (the plain model), 0 = use `pooled_means`;
- `pooled_core` `(k, 4)` int64 rows `[y0, y1, x0, x1]` (pixels of the input, multiples of the stride): the part
  of each input that counts towards the image's statistics (tiles partition the image into such cores);
- output `pooled_sums` `(P,)`: per channel, the sum over the cores of the features (each cell of a level's map
  weighted by the input pixels it covers), so the whole-image mean is the sum over tiles divided by the padded
  image's pixels.

`attach_pooled_io(module)` swaps every `ChannelAttention.pool` for a `PooledIO` layer (no parameters: state dict keys
and the plain output are unchanged: with no request set it calls the original pool). `export.onnx` writes the same
inputs and output into ONNX graphs; `infer.stats` plans how tiles estimate the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.blocks import ChannelAttention

POOLED_INPUTS = ("pooled_means", "pooled_mix", "pooled_core")
POOLED_OUTPUT = "pooled_sums"
WHOLE_CORE = (0, 2**30, 0, 2**30)  # the default core: all of the input


@dataclass
class PoolRequest:
    """One call's pooled I/O: what to inject (`means` None = pool locally) and which cores count; `sums` is filled
    by the call (`(P,)` float32 on the CPU)."""

    cores: torch.Tensor  # (k, 4) int64
    means: torch.Tensor | None = None  # (P,) float32
    sums: torch.Tensor | None = None

    @staticmethod
    def whole(k: int = 1, means: torch.Tensor | None = None) -> PoolRequest:
        return PoolRequest(torch.tensor([WHOLE_CORE] * k, dtype=torch.int64), means)


class PooledIO(nn.Module):
    """Stands in for a global average pool: the plain pool without a request, else pooled I/O (module docstring).

    `factor` is the input pixels per feature cell along each axis at this level (1, 2, 4, ...)."""

    def __init__(self, local: nn.Module, channels: int, offset: int, factor: int) -> None:
        super().__init__()
        self.local, self.channels, self.offset, self.factor = local, channels, offset, factor
        self.request: dict | None = None  # {"means", "mix", "core", "sums": list}, set by the caller per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (k, C, h, w) -> (k, C, 1, 1)
        local = self.local(x)
        request = self.request
        if request is None:
            return local
        cells = torch.ones_like(x[:1, :1].float())  # (1, 1, h, w), dynamic in an exported graph
        rows = cells.cumsum(2) - 1  # cell row index
        cols = cells.cumsum(3) - 1
        core = request["core"].float() / self.factor  # (k, 4) in cells
        inside_y = (rows >= core[:, 0].view(-1, 1, 1, 1)) & (rows < core[:, 1].view(-1, 1, 1, 1))
        inside_x = (cols >= core[:, 2].view(-1, 1, 1, 1)) & (cols < core[:, 3].view(-1, 1, 1, 1))
        mask = (inside_y & inside_x).float()  # (k, 1, h, w)
        request["sums"].append((x.float() * mask).sum(dim=(0, 2, 3)) * float(self.factor**2))  # (C,)
        means = request["means"][self.offset : self.offset + self.channels].view(1, -1, 1, 1)
        mix = request["mix"].view(1, 1, 1, 1)
        return (local.float() * mix + means * (1 - mix)).to(local.dtype)


def pooled_layers(module: nn.Module) -> list[PooledIO]:
    return [m for m in module.modules() if isinstance(m, PooledIO)]


def attach_pooled_io(module: nn.Module, stride: int) -> int:
    """Swap the global pools of `module`'s `ChannelAttention`s for `PooledIO` layers (in place; idempotent);
    returns P, the number of pooled channels (0: nothing to attach, e.g. a ResNet or a TorchScript module)."""
    if isinstance(module, torch.jit.ScriptModule):
        return 0
    existing = pooled_layers(module)
    if existing:
        return sum(layer.channels for layer in existing)
    attentions = [m for m in module.modules() if isinstance(m, ChannelAttention)]
    if not attentions:
        return 0
    sizes: dict[nn.Module, int] = {}

    def record(pool: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        sizes.setdefault(pool, args[0].shape[-1])

    hooks = [attention.pool.register_forward_hook(record) for attention in attentions]
    side = 4 * stride
    param = next(module.parameters())
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, side, side, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    order = sorted(attentions, key=lambda a: list(sizes).index(a.pool))  # forward order
    offset = 0
    for attention in order:
        channels = attention.proj.in_channels
        attention.pool = PooledIO(attention.pool, channels, offset, side // sizes[attention.pool])
        offset += channels
    return offset


def run_pooled(
    module: nn.Module, args: tuple[torch.Tensor, ...], request: PoolRequest, mix: torch.Tensor | None = None
) -> torch.Tensor:
    """Run an attached module once with `request` (its `sums` are filled in); the request is cleared afterwards.
    `mix` overrides the mix that `request.means` implies (the exported graph takes it as an input)."""
    layers = pooled_layers(module)
    total = sum(layer.channels for layer in layers)
    device = args[0].device
    means = request.means if request.means is not None else torch.zeros(total)
    if mix is None:
        mix = torch.tensor([1.0 if request.means is None else 0.0])
    shared = {
        "means": means.to(device, torch.float32),
        "core": request.cores.to(device),
        "mix": mix.to(device, torch.float32),
        "sums": [],
    }
    for layer in layers:
        layer.request = shared
    try:
        restored = module(*args)
    finally:
        for layer in layers:
            layer.request = None
    request.sums = torch.cat(shared["sums"]).float()
    return restored
