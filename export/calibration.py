"""INT8 calibration data: real degraded inputs from the shards' validation split, at the profile's optimum shape.

A calibrator sees what the engine will see: held-out photographs cropped to the optimum (N, 3, H, W), degraded with
the real-world pipeline (`pipeline.reference.degrade_reference`: numpy noise, clip, 8 bits, libjpeg) using
parameters drawn from the full training ranges. Deterministic for a given shards folder, shape and seed.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.config import DegradeConfig
from pipeline.degrade import param_row, sample_params
from pipeline.reference import degrade_reference
from pipeline.valset import read_split_images


class CalibrationError(ValueError):
    """No usable calibration data (empty split, images smaller than the crop)."""


def calibration_batches(
    shards_dir: str | os.PathLike, shape: tuple[int, int, int, int], num_batches: int = 16, seed: int = 0
) -> list[np.ndarray]:
    """`num_batches` float32 arrays of `shape` (N, 3, H, W) in [0, 1]: random crops of the val images (cycling
    through them, several crops per image when there are fewer images than crops), each degraded once."""
    batch, channels, height, width = shape
    if channels != 3:
        raise CalibrationError(f"calibration shape needs 3 channels, got {shape}")
    images = read_split_images(shards_dir, "val")
    if not images:
        raise CalibrationError(f"{shards_dir} has no validation images: repack it with --val-fraction > 0")
    usable = [image for image in images if image.shape[0] >= height and image.shape[1] >= width]
    if not usable:
        largest = max(images, key=lambda image: image.shape[0] * image.shape[1]).shape[:2]
        raise CalibrationError(
            f"no validation image in {shards_dir} is at least {height}x{width} (largest: {largest[0]}x{largest[1]}):"
            " lower the optimum shape of the profile"
        )
    total = batch * num_batches
    rng = np.random.default_rng(seed)
    params = sample_params(
        total, DegradeConfig(curriculum=False), torch.Generator().manual_seed(seed), torch.device("cpu")
    )
    crops = []
    for index in range(total):
        image = usable[index % len(usable)]
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        clean8 = image[top : top + height, left : left + width]
        row = param_row(params, index)
        degraded8 = degrade_reference(clean8, row, rng)  # (H, W, 3) uint8
        crops.append(degraded8.transpose(2, 0, 1).astype(np.float32) / 255)
    stacked = np.stack(crops).reshape(num_batches, batch, 3, height, width)
    return [np.ascontiguousarray(part) for part in stacked]
