"""Exponential moving average of the weights, updated with foreach kernels and no host-device sync.

`torch.optim.swa_utils.AveragedModel` keeps its update count on the device, so each update reads it back (a
blocking copy on CUDA) and then walks the parameters in a Python loop. Here the count is a host integer and one
update is two foreach calls: `lerp_` of the parameters towards the model's, and `copy_` of the buffers (BatchNorm
statistics and the like are followed, not averaged, as `AveragedModel(use_buffers=True)` with an EMA does).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Ema:
    """`module` holds the averaged weights (what validation and `best.pt` use); `n_averaged` counts updates."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.n_averaged = 0
        # the tensor lists, walked once: a walk of a NAFNet's modules costs ~0.2 ms of host time, twice per step
        self._ours = (list(self.module.parameters()), list(self.module.buffers()))
        self._source: nn.Module | None = None
        self._theirs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """The first update copies `model`; each later one moves every weight `1 - decay` of the way towards it."""
        if model is not self._source:
            self._source, self._theirs = model, (list(model.parameters()), list(model.buffers()))
        (ours, our_buffers), (theirs, their_buffers) = self._ours, self._theirs  # no_grad: usable as they are
        if self.n_averaged == 0:
            torch._foreach_copy_(ours, theirs)
        else:
            torch._foreach_lerp_(ours, theirs, 1.0 - self.decay)
        if our_buffers:
            torch._foreach_copy_(our_buffers, their_buffers)
        self.n_averaged += 1
