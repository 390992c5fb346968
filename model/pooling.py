"""Whole-image channel statistics for tiled inference of models with global pooling (NAFNet's channel attention).

A NAFBlock scales its channels by a 1x1 conv of the features' mean over the whole image; a tile only sees its own
mean, which is what makes tiled NAFNet output drift from the untiled one (tenths of a dB, docs/infer.md). The
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
inputs and output into ONNX graphs, the inputs with defaults (local pooling), so a plain caller sees the old graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.blocks import ChannelAttention

POOLED_INPUTS = ("pooled_means", "pooled_mix", "pooled_core")
POOLED_OUTPUT = "pooled_sums"
WHOLE_CORE = (0, 2**30, 0, 2**30)  # the default core: all of the input
DEFAULT_STATS = "sample:4+passes:3"  # how tiles get whole-image statistics (stats_plan; docs/infer.md)


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


@dataclass(frozen=True)
class StatsPlan:
    downscale: int  # estimate from the image downscaled by this factor first (0: no)
    passes: int  # then this many statistics passes over the sampled tiles
    sample: int = 1  # the statistics passes run a lattice of small tiles this many apart (1: all the tiles)


def in_lattice(row: int, column: int, spacing: int) -> bool:
    """Whether tile (row, column) is in a lattice of every `spacing`-th row and column, each such row shifted by half
    a spacing from the one before (so the samples spread like a quincunx)."""
    return row % spacing == 0 and (column + (row // spacing) * (spacing // 2)) % spacing == 0


def backend_pools(backend: object) -> bool:
    return bool(getattr(backend, "pool_channels", 0))


def stats_plan(backend: object, stats: str) -> StatsPlan:
    """Parse `stats`, "auto" (= `DEFAULT_STATS`) or parts joined by "+": "local" (each tile pools alone),
    "passes:N" (N statistics passes, each using the means of the one before, before the final pass), "sample:S"
    (those passes run only every S-th row and column of a grid of `STATS_TILE` px tiles; one pass unless "passes"
    says), "downscale:F" (start from the means of the image downscaled F times, run whole)."""
    stats = DEFAULT_STATS if stats == "auto" else stats
    if not backend_pools(backend):
        return StatsPlan(0, 0)
    found = {"downscale": 0, "passes": 0, "sample": 1}
    for part in stats.split("+"):
        kind, _, value = part.partition(":")
        if kind == "local" and not value:
            continue
        if kind not in found or not value.isdigit():
            raise ValueError(
                f"unknown pooling statistics {stats!r}: use local, passes:N, sample:K, downscale:F "
                "(or several joined by +)"
            )
        found[kind] = int(value)
    if found["sample"] > 1 and "passes" not in stats:
        found["passes"] = 1
    if found["downscale"] and getattr(backend, "fixed_hw", None):  # a graph of one input size cannot run it
        found["downscale"], found["passes"] = 0, max(found["passes"], 1)
    return StatsPlan(**found)


def downscaled_means(
    backend: Callable, image: torch.Tensor, factor: int, condition: torch.Tensor | None
) -> torch.Tensor:
    """Whole-image pooled means of the image downscaled by `factor` (area average), run whole: `(P,)`."""
    small_hw = (max(1, image.shape[-2] // factor), max(1, image.shape[-1] // factor))
    small = torch.nn.functional.interpolate(image, size=small_hw, mode="area")
    request = PoolRequest.whole()
    backend(small, condition, pooling=request)
    stride = backend.stride
    pixels = -(-small_hw[0] // stride) * stride * (-(-small_hw[1] // stride) * stride)
    return request.sums.cpu() / pixels
