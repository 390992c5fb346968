"""Shared fixtures: the device under test (TORCH_DEVICE, default cpu) and small natural-looking images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def randomise_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every parameter random values, so zero-initialised branches and tails no longer hide anything."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def natural_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with smooth gradients, edges and texture: enough structure to exercise a codec."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(40, 200, 3)[None, None] + 40 * np.sin(xx[..., None] / rng.uniform(3, 15, 3) + yy[..., None] / 9)
    edge = (xx + rng.uniform(-0.5, 0.5) * yy > width / 2)[..., None] * rng.uniform(-60, 60, 3)
    texture = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + edge + texture, 0, 255).astype(np.uint8)


def shared_images(subset: str, limit: int) -> list[Path]:
    folder = SHARED_DATA / subset
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data set is optional)")
    return sorted(folder.glob("*.png"))[:limit]


# A trainer config that runs in seconds on a CPU (tests of the trainer and of what it feeds).
TINY_MODEL_AND_LOADER = [
    "model.name=resnet",
    "model.kwargs={width: 8, num_blocks: 2}",
    "loader.batch_size=4",
    "loader.patch_size=32",
    "loader.workers=0",
    "loader.crops_per_image=2",
]
TINY = TINY_MODEL_AND_LOADER + [
    "run.steps=12",
    "run.log_every=2",
    "run.val_every=6",
    "run.ckpt_every=3",
    "run.threads=1",
    "run.sanity_steps=1000",
    "optim.warmup_steps=3",
    "val.crop=48",
    "val.variants=2",
    "log.wandb=off",
]
