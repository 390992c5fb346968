"""The training state: everything the loop mutates, so the step, the loop and checkpoints are plain functions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from train.distributed import DistEnv
from train.ema import Ema


@dataclass
class State:
    """Everything the loop mutates, so helpers can be plain functions; `env` is this process's place among ranks."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: Ema | None
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator  # on the device: noise, withheld conditions
    host_generator: torch.Generator  # on the CPU: the degradation parameters (group sizes known without a sync)
    env: DistEnv = field(default_factory=DistEnv)
    step: int = 0
    best_psnr: float = -math.inf
    stop_signal: list[int] = field(default_factory=list)
