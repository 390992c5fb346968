"""Whole-image or tiled restoration with seamless blending: `restore(backend, degraded, tile, overlap, condition)`.

Tiles (multiples of the model's stride, `infer.grid`) are weighted by their blending windows, summed and divided by
the summed weights; a model whose receptive field reaches at most `overlap // 4` pixels (a small ResNet) gives the
untiled output up to float rounding. NAFNet's global pooling would see only its tile: backends with pooled I/O
(`model.pooling`) get whole-image statistics from statistics passes over a sparse lattice of small tiles before the
one full pass (`stats`; measured in docs/infer.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from infer.grid import Box, fit_axis, tile_grid
from infer.memory import Runnable, bytes_per_pixel, free_bytes
from infer.stats import StatsPlan, backend_pools, downscaled_means, in_lattice, stats_plan
from model.pooling import PoolRequest
from model.testtime import SelfEnsemble

DEFAULT_OVERLAP = 32
MIN_TILE = 256  # auto tiles never go below this: the tiled NAFNet then stays close to untiled (docs/infer.md)
MAX_TILES_PER_CALL = 16
Progress = Callable[[int, int], None]  # progress(tiles done, tiles in all) for one image
SURELY_FITS_BYTES_PER_PIXEL = 65536  # far above any model in model/: small images skip the memory measurement
STATS_TILE = 256  # tiles of the sampled statistics passes ("sample:S"): small, so that they spread widely
MIN_SAMPLED = 4  # a sampled statistics pass runs at least this many tiles (or all of a small image's)
MAX_STATS_SHARE = 0.35  # sampled statistics passes run at most this share of the image's pixels (at least one pass;
# a small image whose lattice holds all its tiles runs every pass asked for)
MAX_AUTO_TILE = 1024  # automatic tiles stop here: larger ones run no faster per pixel on a CPU (docs/infer.md)
CPU_ACTIVATION_LIMIT_BYTES = 2 * 2**30  # one forward pass on a CPU holds at most this: a 12 MP photo then stays
# within 3 GiB resident with its tiles, input and output (docs/infer.md)


def restore(
    backend: Runnable,
    degraded: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    condition: torch.Tensor | None = None,
    *,
    stats: str = "auto",
    progress: Progress | None = None,
    ensemble: bool = False,
) -> torch.Tensor:
    """Restore `(N, 3, H, W)` images in [0, 1] (result on the input's device). `tile=None`: the whole image when it
    fits in free memory, else the largest tile that fits; a `tile` that is not a multiple of `backend.stride` is
    rounded down to one. `condition`: `(N, 4)` rows for a conditioned model, or None. `stats`: how tiles of a
    backend with pooled I/O get whole-image channel means (`stats_plan`: "local" = each tile pools alone).
    `progress(done, total)` is called as tiles finish (per image; not for images run whole). `ensemble`: the mean
    over the 8 flips and quarter turns of the input (`model.testtime.SelfEnsemble`), each pass through `backend`."""
    if ensemble:
        return _self_ensemble(backend, degraded, tile, overlap, condition, stats, progress)
    if degraded.ndim != 4:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(degraded.shape)}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
    n, _, height, width = degraded.shape
    fixed_hw, max_hw = getattr(backend, "fixed_hw", None), getattr(backend, "max_hw", None)
    if tile is not None:
        tile = check_tile(min(tile, *max_hw) if max_hw else tile, backend.stride, overlap)
        return _restore_with(backend, degraded, tile, overlap, condition, stats, progress)
    if fixed_hw is not None:  # a file of one input size: tiles of that size, whatever the memory
        return _restore_with(backend, degraded, max(fixed_hw), overlap, condition, stats, progress)
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
            return _restore_with(backend, degraded, tile, overlap, condition, stats, progress, fit=True)
        except torch.cuda.OutOfMemoryError:
            smaller = check_tile(tile // 2, backend.stride, overlap)
            if smaller >= tile or smaller < MIN_TILE:
                raise
            torch.cuda.empty_cache()
            tile = smaller


def usable_bytes(device: torch.device) -> int:
    """Memory one forward pass may use: the usable free memory, on a CPU `CPU_ACTIVATION_LIMIT_BYTES` at most."""
    free = free_bytes(device)
    return min(free, CPU_ACTIVATION_LIMIT_BYTES) if device.type == "cpu" else free


def fits_whole(backend: Runnable, n: int, height: int, width: int) -> bool:
    """Whether `n` images of `height x width` fit in one forward pass in the memory the backend may use."""
    free = usable_bytes(backend.device)
    if n * height * width * SURELY_FITS_BYTES_PER_PIXEL <= free:
        return True
    return n * height * width * bytes_per_pixel(backend) <= free


def auto_tile(backend: Runnable, overlap: int = DEFAULT_OVERLAP) -> int:
    """The largest square tile (a multiple of the stride, from `MIN_TILE` to `MAX_AUTO_TILE`) whose forward pass fits
    in the memory the backend may use."""
    side = min(int(math.sqrt(usable_bytes(backend.device) / bytes_per_pixel(backend))), MAX_AUTO_TILE)
    floor = max(MIN_TILE, 4 * overlap + backend.stride)
    return check_tile(max(side, floor), backend.stride, overlap)


def _self_ensemble(
    backend: Runnable,
    degraded: torch.Tensor,
    tile: int | None,
    overlap: int,
    condition: torch.Tensor | None,
    stats: str,
    progress: Progress | None,
) -> torch.Tensor:
    """`restore` of the 8 flips and quarter turns of `degraded`, each turned back, averaged."""

    def one_pass(turned: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return restore(backend, turned, tile, overlap, rows, stats=stats, progress=progress)

    return SelfEnsemble(one_pass)(degraded, condition)


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
    backend: Runnable,
    degraded: torch.Tensor,
    tile: int,
    overlap: int,
    condition: torch.Tensor | None,
    stats: str,
    progress: Progress | None,
    fit: bool = False,
) -> torch.Tensor:
    """Tiles of `tile` px (or the file's fixed size); `fit` shrinks each axis's tiles to cover it evenly."""
    fixed_hw = getattr(backend, "fixed_hw", None)
    tile_h, tile_w = fixed_hw or (tile, tile)
    height, width = degraded.shape[-2:]
    if fit and fixed_hw is None:
        tile_h = fit_axis(height, tile, overlap, backend.stride)
        tile_w = fit_axis(width, tile, overlap, backend.stride)
    if fixed_hw is None and tile_h >= height and tile_w >= width:
        return backend(degraded, condition)
    if fixed_hw is not None:  # the file's size decides the tile: shrink the overlap to fit it
        overlap = min(overlap, max(0, (min(fixed_hw) // 2 - 1) // backend.stride * backend.stride))
    per_call = _tiles_per_call(backend, tile_h, tile_w)
    restored = []
    for i in range(len(degraded)):
        rows = None if condition is None else condition[i : i + 1]
        image = degraded[i : i + 1]
        restored.append(_restore_one(backend, image, tile_h, tile_w, overlap, rows, per_call, stats, progress))
    return torch.cat(restored)


def _tiles_per_call(backend: Runnable, tile_h: int, tile_w: int) -> int:
    """Tiles batched into one call: on CUDA as many as memory allows (throughput); one elsewhere."""
    if backend.device.type != "cuda":
        return 1
    fitting = free_bytes(backend.device) // max(1.0, tile_h * tile_w * bytes_per_pixel(backend))
    return int(min(MAX_TILES_PER_CALL, max(1, fitting)))


def _restore_one(
    backend: Runnable,
    image: torch.Tensor,
    tile_h: int,
    tile_w: int,
    overlap: int,
    condition: torch.Tensor | None,
    per_call: int,
    stats: str,
    progress: Progress | None,
) -> torch.Tensor:
    """Tile one `(1, 3, H, W)` image, run the tiles in groups of `per_call`, blend them back.

    The image is first padded (replicate, bottom and right) to a multiple of the stride, as the model pads it
    when it runs whole, and tiles start at multiples of the stride: each tile then sees the same downsampling grid
    as the untiled run. A backend with pooled I/O gets whole-image statistics estimated as `stats` says."""
    height, width = image.shape[-2:]
    stride = backend.stride
    full_h, full_w = max(tile_h, -(-height // stride) * stride), max(tile_w, -(-width // stride) * stride)
    padded = torch.nn.functional.pad(image, (0, full_w - width, 0, full_h - height), mode="replicate")
    boxes, _ = tile_grid((full_h, full_w), (tile_h, tile_w), overlap, stride, padded.device)
    weight_sum = torch.zeros(1, 1, full_h, full_w, dtype=padded.dtype, device=padded.device)
    for box in boxes:
        weight_sum[:, :, box.y : box.y + tile_h, box.x : box.x + tile_w] += box.window
    plan = stats_plan(backend, stats)
    sampled = _sampled_grid(plan, (full_h, full_w), (tile_h, tile_w), overlap, stride, padded.device)
    counted = sum((b.core[1] - b.core[0]) * (b.core[3] - b.core[2]) for b in sampled)  # = full_h * full_w for all
    passes = plan.passes
    run = sum(b.window.numel() for b in sampled)
    if plan.sample > 1 and run < full_h * full_w:  # a sparse lattice keeps its cost: fewer passes where it is dense
        passes = max(1, min(passes, int(MAX_STATS_SHARE * full_h * full_w // run)))
    counter = _Counter(progress, len(boxes) + len(sampled) * passes, plan.downscale)
    means = None
    if plan.downscale:
        means = downscaled_means(backend, image, plan.downscale, condition)
        counter.step(0)
    for _ in range(passes):  # each pass's means feed the next: one more level of dependence settled
        sums = _run_tiles(backend, padded, sampled, weight_sum, per_call, condition, means, counter, blend=False)
        means = sums / counted
    pooled = means if backend_pools(backend) else None
    blended = _run_tiles(backend, padded, boxes, weight_sum, per_call, condition, pooled, counter, blend=True)
    return blended[:, :, :height, :width]


def _sampled_grid(
    plan: StatsPlan,
    full_hw: tuple[int, int],
    tile_hw: tuple[int, int],
    overlap: int,
    stride: int,
    device: torch.device,
) -> list[Box]:
    """The tiles the statistics passes run: all the image's tiles, or with `plan.sample` a lattice of 1 in
    `sample`**2 tiles of at most `STATS_TILE` px, spaced closer where that would leave fewer than `MIN_SAMPLED`."""
    if plan.sample <= 1:
        return tile_grid(full_hw, tile_hw, overlap, stride, device)[0] if plan.passes else []
    small = tuple(min(t, STATS_TILE) for t in tile_hw)
    boxes, columns = tile_grid(full_hw, small, overlap, stride, device)
    rows = len(boxes) // columns
    for spacing in range(plan.sample, 0, -1):
        chosen = [b for i, b in enumerate(boxes) if in_lattice(i // columns, i % columns, spacing)]
        if len(chosen) >= min(MIN_SAMPLED, rows * columns) or spacing == 1:
            return chosen
    return boxes


class _Counter:
    """Reports tiles done to `progress(done, total)`; a downscaled estimate counts as one tile."""

    def __init__(self, progress: Progress | None, total: int, extra: int) -> None:
        self.progress, self.total, self.done = progress, total + (1 if extra else 0), 0
        if progress is not None:
            progress(0, self.total)

    def step(self, count: int = 1) -> None:
        self.done += max(count, 1)
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_tiles(
    backend: Runnable,
    padded: torch.Tensor,
    boxes: list[Box],
    weight_sum: torch.Tensor,
    per_call: int,
    condition: torch.Tensor | None,
    means: torch.Tensor | None,
    counter: _Counter,
    blend: bool,
) -> torch.Tensor:
    """Run every tile; return the blended `(1, 3, H, W)` result when `blend`, else the pooled sums `(P,)`.
    `means` (backends with pooled I/O) replace each tile's own pooling."""
    size_y, size_x = boxes[0].window.shape
    total = torch.zeros_like(padded) if blend else None  # (1, 3, H, W) weighted sum of tile outputs
    sums = torch.zeros(getattr(backend, "pool_channels", 0))
    for first in range(0, len(boxes), per_call):
        group = boxes[first : first + per_call]
        tiles = torch.cat([padded[:, :, b.y : b.y + size_y, b.x : b.x + size_x] for b in group])
        cond = None if condition is None else condition.expand(len(group), -1)
        request = None
        if backend_pools(backend) and (means is not None or not blend):
            request = PoolRequest(torch.tensor([b.core for b in group], dtype=torch.int64), means)
        outputs = backend(tiles, cond, pooling=request) if request is not None else backend(tiles, cond)
        if request is not None:
            sums += request.sums.cpu()
        counter.step(len(group))
        if blend:
            for box, output in zip(group, outputs.to(padded.device), strict=True):
                total[:, :, box.y : box.y + size_y, box.x : box.x + size_x] += output * box.window
    return total / weight_sum if blend else sums
