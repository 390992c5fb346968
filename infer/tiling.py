"""Whole-image or tiled restoration with seamless blending: `restore(backend, degraded, tile, overlap, condition)`.

Tiles are equal squares (multiples of the model's stride, so the model pads nothing inside a tile); along each axis
they start every `tile - overlap` pixels and the last one is moved back to end at the image border, so the border is
never padded differently from the untiled run. Each tile's output is weighted by a separable window: zero on the
`overlap // 4` pixels next to an edge shared with another tile (where zero padding corrupts the result), then a
raised cosine up to one, and one at image borders; overlapping tiles are summed and divided by the summed weights.
A model whose receptive field reaches at most `overlap // 4` pixels (a small ResNet) therefore gives the untiled
output up to float rounding; the NAFNet's global pooling sees only its tile, so it differs slightly (measured in
docs/notes/infer.md).
"""

from __future__ import annotations

import math

import torch

from infer.memory import Runnable, bytes_per_pixel, free_bytes
from infer.pooling import GlobalPooling, pooled_modules

DEFAULT_OVERLAP = 32
MIN_TILE = 256  # auto tiles never go below this: the tiled NAFNet stays within 0.05 dB of untiled (docs)
MAX_TILES_PER_CALL = 16
STAT_PASSES = 3  # passes that collect whole-image channel means before the pass that uses them (infer.pooling)
SURELY_FITS_BYTES_PER_PIXEL = 65536  # far above any model in model/: small images skip the memory measurement


def restore(
    backend: Runnable, degraded: torch.Tensor, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
    condition: torch.Tensor | None = None, *, stat_passes: int = STAT_PASSES,
) -> torch.Tensor:  # fmt: skip
    """Restore `(N, 3, H, W)` images in [0, 1] (result on the input's device). `tile=None`: the whole image when it
    fits in free memory, else the largest tile that fits; a `tile` that is not a multiple of `backend.stride` is
    rounded down to one. `condition`: `(N, 4)` rows for a conditioned model, or None. `stat_passes`: extra passes
    estimating whole-image channel means for models with global pooling (0 = each tile pools alone)."""
    if degraded.ndim != 4:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(degraded.shape)}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
    n, _, height, width = degraded.shape
    fixed_hw, max_hw = getattr(backend, "fixed_hw", None), getattr(backend, "max_hw", None)
    if tile is not None:
        tile = check_tile(min(tile, *max_hw) if max_hw else tile, backend.stride, overlap)
        return _restore_with(backend, degraded, tile, overlap, condition, stat_passes)
    if fixed_hw is not None:  # a file of one input size: tiles of that size, whatever the memory
        return _restore_with(backend, degraded, max(fixed_hw), overlap, condition, stat_passes)
    within = max_hw is None or (height <= max_hw[0] and width <= max_hw[1])
    if within and fits_whole(backend, n, height, width):
        try:
            return backend(degraded, condition)
        except torch.cuda.OutOfMemoryError:  # the estimate was optimistic: tile instead
            torch.cuda.empty_cache()
    tile = auto_tile(backend, overlap)
    if max_hw is not None:  # an engine's largest input
        tile = check_tile(min(tile, *max_hw), backend.stride, overlap)
    while True:
        try:
            return _restore_with(backend, degraded, tile, overlap, condition, stat_passes)
        except torch.cuda.OutOfMemoryError:
            smaller = check_tile(tile // 2, backend.stride, overlap)
            if smaller >= tile or smaller < MIN_TILE:
                raise
            torch.cuda.empty_cache()
            tile = smaller


def fits_whole(backend: Runnable, n: int, height: int, width: int) -> bool:
    """Whether `n` images of `height x width` fit in one forward pass in the free memory of the backend's device."""
    free = free_bytes(backend.device)
    if n * height * width * SURELY_FITS_BYTES_PER_PIXEL <= free:
        return True
    return n * height * width * bytes_per_pixel(backend) <= free


def auto_tile(backend: Runnable, overlap: int = DEFAULT_OVERLAP) -> int:
    """The largest square tile (a multiple of the stride, at least `MIN_TILE`) whose forward pass fits in memory."""
    side = int(math.sqrt(free_bytes(backend.device) / bytes_per_pixel(backend)))
    floor = max(MIN_TILE, 4 * overlap + backend.stride)
    return check_tile(max(side, floor), backend.stride, overlap)


def check_tile(tile: int, stride: int, overlap: int) -> int:
    """`tile` rounded down to a multiple of `stride`; ValueError when that leaves no room for the overlap."""
    rounded = tile // stride * stride
    if rounded < stride or rounded <= 2 * (-(-overlap // stride) * stride):
        raise ValueError(
            f"tile {tile} px is too small: it must be at least the model's stride ({stride}) and more than twice "
            f"the overlap ({overlap}, rounded up to a multiple of the stride)"
        )
    return rounded


def _restore_with(
    backend: Runnable, degraded: torch.Tensor, tile: int, overlap: int, condition: torch.Tensor | None,
    stat_passes: int,
) -> torch.Tensor:  # fmt: skip
    fixed_hw = getattr(backend, "fixed_hw", None)
    tile_h, tile_w = fixed_hw or (tile, tile)
    height, width = degraded.shape[-2:]
    if fixed_hw is None and tile_h >= height and tile_w >= width:
        return backend(degraded, condition)
    if fixed_hw is not None:  # the file's size decides the tile: shrink the overlap to fit it
        overlap = min(overlap, max(0, (min(fixed_hw) // 2 - 1) // backend.stride * backend.stride))
    per_call = _tiles_per_call(backend, tile_h, tile_w)
    restored = []
    for i in range(len(degraded)):
        rows = None if condition is None else condition[i : i + 1]
        image = degraded[i : i + 1]
        restored.append(_restore_one(backend, image, tile_h, tile_w, overlap, rows, per_call, stat_passes))
    return torch.cat(restored)


def _tiles_per_call(backend: Runnable, tile_h: int, tile_w: int) -> int:
    """Tiles batched into one call: on CUDA as many as memory allows (throughput); one elsewhere."""
    if backend.device.type != "cuda":
        return 1
    fitting = free_bytes(backend.device) // max(1.0, tile_h * tile_w * bytes_per_pixel(backend))
    return int(min(MAX_TILES_PER_CALL, max(1, fitting)))


def _restore_one(
    backend: Runnable, image: torch.Tensor, tile_h: int, tile_w: int, overlap: int,
    condition: torch.Tensor | None, per_call: int, stat_passes: int,
) -> torch.Tensor:  # fmt: skip
    """Tile one `(1, 3, H, W)` image, run the tiles in groups of `per_call`, blend them back.

    The image is first padded (replicate, bottom and right) to a multiple of the stride, as the model pads it
    when it runs whole, and tiles start at multiples of the stride: each tile then sees the same downsampling grid
    as the untiled run. A model with global pooling that can be hooked runs `stat_passes` extra passes that
    estimate the whole-image means (`infer.pooling`)."""
    height, width = image.shape[-2:]
    stride = backend.stride
    full_h, full_w = max(tile_h, -(-height // stride) * stride), max(tile_w, -(-width // stride) * stride)
    padded = torch.nn.functional.pad(image, (0, full_w - width, 0, full_h - height), mode="replicate")
    step_overlap = -(-overlap // stride) * stride
    starts_y, size_y = _starts(full_h, tile_h, step_overlap)
    starts_x, size_x = _starts(full_w, tile_w, step_overlap)
    rows = list(zip(starts_y, _axis_weights(full_h, starts_y, size_y, overlap), strict=True))
    columns = list(zip(starts_x, _axis_weights(full_w, starts_x, size_x, overlap), strict=True))
    boxes = [(y, x, (wy[:, None] * wx[None, :]).to(padded.device)) for y, wy in rows for x, wx in columns]
    weight_sum = torch.zeros(1, 1, full_h, full_w, dtype=padded.dtype, device=padded.device)
    for y, x, window in boxes:
        weight_sum[:, :, y : y + size_y, x : x + size_x] += window
    pools = pooled_modules(backend)
    if not pools or stat_passes == 0:
        return _run_tiles(backend, padded, boxes, weight_sum, per_call, condition, None)[:, :, :height, :width]
    with GlobalPooling(pools, (full_h, full_w)) as pooling:
        for index in range(stat_passes + 1):
            pooling.next_pass(inject=index > 0)
            blended = _run_tiles(backend, padded, boxes, weight_sum, per_call, condition, pooling)
    return blended[:, :, :height, :width]


def _run_tiles(
    backend: Runnable, padded: torch.Tensor, boxes: list, weight_sum: torch.Tensor, per_call: int,
    condition: torch.Tensor | None, pooling: GlobalPooling | None,
) -> torch.Tensor:  # fmt: skip
    """Run every tile and return the blended `(1, 3, H, W)` result; `pooling` is told each tile's output share."""
    size_y, size_x = boxes[0][2].shape
    total = torch.zeros_like(padded)  # (1, 3, H, W) weighted sum of tile outputs
    for first in range(0, len(boxes), per_call):
        group = boxes[first : first + per_call]
        tiles = torch.cat([padded[:, :, y : y + size_y, x : x + size_x] for y, x, _ in group])
        if pooling is not None:
            shares = [window / weight_sum[0, 0, y : y + size_y, x : x + size_x] for y, x, window in group]
            pooling.shares = torch.stack(shares)[:, None]  # (k, 1, tile_h, tile_w)
        cond = None if condition is None else condition.expand(len(group), -1)
        outputs = backend(tiles, cond).to(padded.device)
        if pooling is not None:
            pooling.commit()
        for (y, x, window), output in zip(group, outputs, strict=True):
            total[:, :, y : y + size_y, x : x + size_x] += output * window
    return total / weight_sum


def _starts(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Tile start positions along one axis and the tile's extent there (the whole axis when it is shorter)."""
    if length <= tile:
        return [0], length
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    return starts, tile


def _axis_weights(length: int, starts: list[int], size: int, overlap: int) -> list[torch.Tensor]:
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
