"""Whole-image channel statistics for tiled inference of models with global pooling (NAFNet's channel attention).

A NAFBlock scales its channels by a 1x1 conv of the features' mean over the whole image; a tile only sees its own
mean, which is what makes tiled NAFNet output drift from the untiled one (a tenth of a dB and several grey levels
measured, docs/notes/infer.md). `GlobalPooling` hooks every `ChannelAttention` pool of an `nn.Module` and runs in two
modes over the same tiles: `collect` adds each tile's features, weighted by its share of the blended output (the
blending window divided by the summed windows, so every image pixel counts once), into a whole-image mean per
pool; `inject` makes every tile use those means instead of its own. One collecting pass then one injecting pass
(which also collects, for a further pass when asked) bring the tiled result close to the untiled one.
TorchScript, ONNX and TensorRT graphs cannot be hooked: they tile with local pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import ChannelAttention


def pooled_modules(backend: object) -> list[nn.Module]:
    """The global-pooling modules of a backend's eager `nn.Module` (empty for other backends or models)."""
    module = getattr(backend, "module", None)
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return []
    return [m.pool for m in module.modules() if isinstance(m, ChannelAttention)]


class GlobalPooling:
    """Context manager hooking `pools`; between backend calls, `shares` must hold the current tiles' output
    shares `(k, 1, tile_h, tile_w)` and `commit()` must follow each call (a call may run the model twice when
    it falls back from reduced precision: only its last run counts)."""

    def __init__(self, pools: list[nn.Module], padded_hw: tuple[int, int]) -> None:
        self.pools = pools
        self.pixels = padded_hw[0] * padded_hw[1]  # the untiled model pools over the padded image
        self.shares: torch.Tensor | None = None
        self.inject = False
        self.means: dict[nn.Module, torch.Tensor] = {}
        self._sums: dict[nn.Module, torch.Tensor] = {}
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> GlobalPooling:
        self._handles = [pool.register_forward_hook(self._hook) for pool in self.pools]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, pool: nn.Module, args: tuple[torch.Tensor, ...], pooled: torch.Tensor) -> torch.Tensor | None:
        features = args[0]  # (k, C, h, w) at this level of the U-Net
        factor = self.shares.shape[-2] // features.shape[-2]
        shares = F.avg_pool2d(self.shares, factor) * factor**2 if factor > 1 else self.shares  # (k, 1, h, w)
        weighted = (features.float() * shares.to(features.device)).sum(dim=(0, 2, 3))  # (C,)
        self._pending[pool] = weighted / self.pixels
        if self.inject and pool in self.means:
            return self.means[pool].to(pooled.dtype).view(1, -1, 1, 1).expand_as(pooled)
        return None

    def commit(self) -> None:
        """Add the last call's contributions to the whole-image means being collected."""
        for pool, weighted in self._pending.items():
            self._sums[pool] = self._sums.get(pool, 0) + weighted
        self._pending.clear()

    def next_pass(self, inject: bool) -> None:
        """Start a pass over the tiles; when `inject`, the means collected so far replace each tile's own."""
        if inject:
            self.means = dict(self._sums)
        self._sums.clear()
        self.inject = inject
