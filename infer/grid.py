"""Tile geometry: where tiles start, their blending windows and cores, and tile sizes that cover an axis evenly.

Along each axis tiles start every `tile - overlap` pixels (multiples of the stride) and the last one is moved back
to end at the border. Each tile's window is zero on the `overlap // 4` pixels next to an edge shared with another
tile (where zero padding corrupts the result), then a raised cosine up to one, and one at image borders. Each tile
also has a core: the cores split the overlaps in the middle and partition the image, so features summed over the
cores count every pixel once (`model.pooling`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Box:
    """One tile: its top-left corner in the padded image, its blending window, its core `(y0, y1, x0, x1)` (tile
    pixels whose features count towards the image's pooled statistics; the cores partition the image)."""

    y: int
    x: int
    window: torch.Tensor  # (tile_h, tile_w)
    core: tuple[int, int, int, int]


def fit_axis(length: int, tile: int, overlap: int, stride: int) -> int:
    """The smallest tile extent (a multiple of `stride`, at most `tile`) that covers `length` with as few tiles as
    `tile` needs: tiles then end near the border instead of the last one mostly repeating its neighbour."""
    length = -(-length // stride) * stride
    if length <= tile:
        return length
    step_overlap = -(-overlap // stride) * stride
    count = -(-(length - step_overlap) // (tile - step_overlap))
    size = -(-(length - step_overlap) // count) + step_overlap
    return min(tile, -(-size // stride) * stride)


def tile_grid(
    full_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int, stride: int, device: torch.device
) -> tuple[list[Box], int]:
    """The tiles covering a padded image (row by row) and the number of columns."""
    step_overlap = -(-overlap // stride) * stride
    axes = []
    for length, tile in zip(full_hw, tile_hw, strict=True):
        starts, size = starts_along(length, tile, step_overlap)
        axes.append(
            list(zip(starts, axis_weights(length, starts, size, overlap), cores(starts, size, stride), strict=True))
        )
    boxes = [
        Box(y, x, (wy[:, None] * wx[None, :]).to(device), (*cy, *cx)) for y, wy, cy in axes[0] for x, wx, cx in axes[1]
    ]
    return boxes, len(axes[1])


def cores(starts: list[int], size: int, stride: int) -> list[tuple[int, int]]:
    """Per tile, the `(start, end)` of its core along one axis, in tile pixels: the cores split each overlap in the
    middle (at a multiple of the stride) and together cover the axis once."""
    bounds = [0]
    for left, right in itertools.pairwise(starts):
        bounds.append((left + size + right) // 2 // stride * stride)
    bounds.append(starts[-1] + size)
    return [(low - start, high - start) for start, low, high in zip(starts, bounds[:-1], bounds[1:], strict=True)]


def starts_along(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Tile start positions along one axis and the tile's extent there (the whole axis when it is shorter)."""
    if length <= tile:
        return [0], length
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    return starts, tile


def axis_weights(length: int, starts: list[int], size: int, overlap: int) -> list[torch.Tensor]:
    """One 1-D window per tile: a zero margin and a raised-cosine ramp at edges shared with a neighbour."""
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    distance = torch.arange(size, dtype=torch.float32)  # from the tile's first pixel
    ramp = torch.ones(size)
    if ramp_len > 0:
        rising = 0.5 - 0.5 * torch.cos(math.pi * (distance - margin + 0.5) / ramp_len)
        ramp = torch.where(distance < margin + ramp_len, rising, ramp)
    ramp = torch.where(distance < margin, torch.zeros(size), ramp)
    windows = []
    for start in starts:
        window = torch.ones(size)
        if start > 0:
            window = window * ramp
        if start + size < length:
            window = window * ramp.flip(0)
        windows.append(window)
    return windows
