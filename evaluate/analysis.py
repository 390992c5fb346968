"""Per-tile analysis for the failure report: tile PSNR, content classes of the clean image, comparison crops.

Tile content rule (on the clean image only, so every method is judged on the same labels):
the image is cut into non-overlapping `tile x tile` squares (remainders at the right and bottom are ignored); on the
BT.601 luma Y on the 0-255 scale, gradients gx, gy are central differences (edges replicated). Per tile:
- `flat`    if the RMS gradient sqrt(mean(gx^2 + gy^2)) < FLAT_GRADIENT_255 (3 grey levels per pixel); RMS rather
            than the mean magnitude so that one sharp edge across an otherwise flat tile is not called flat;
- `edge`    else if the structure-tensor coherence sqrt((Jxx - Jyy)^2 + 4 Jxy^2) / (Jxx + Jyy) >= EDGE_COHERENCE
            (0.5), with J the tile means of gx^2, gy^2, gx gy: one orientation dominates (lines, contours);
- `texture` otherwise: strong gradients in mixed orientations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluate.metrics import psnr_from_mse, rgb_to_y

FLAT_GRADIENT_255 = 3.0
EDGE_COHERENCE = 0.5
TILE_CLASSES = ("flat", "edge", "texture")


def quantise(image: torch.Tensor) -> torch.Tensor:
    """Float image -> the same clipped to [0, 1] and rounded to 8 bits, as a saved PNG would hold it."""
    return image.clamp(0, 1).mul(255).round().div(255)


def tile_size_for(height: int, width: int, tile: int) -> int:
    """The tile edge used for an image: `tile`, or the shorter image side when the image is smaller."""
    return max(1, min(tile, height, width))


def tile_psnr(restored: torch.Tensor, clean: torch.Tensor, tile: int) -> torch.Tensor:
    """RGB PSNR per tile, (rows * cols,) row-major, of (1, 3, H, W) tensors in [0, 1]."""
    squared = (restored.float() - clean.float()).pow(2).mean(dim=1, keepdim=True)  # (1, 1, H, W)
    return psnr_from_mse(F.avg_pool2d(squared, tile, stride=tile).flatten())


def tile_classes(clean: torch.Tensor, tile: int) -> list[str]:
    """Content class per tile, row-major, of a (1, 3, H, W) clean image in [0, 1] (rule in the module docstring)."""
    luma = rgb_to_y(clean) * 255.0  # (1, 1, H, W)
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    stats = torch.cat([gx * gx, gy * gy, gx * gy], dim=1)
    jxx, jyy, jxy = F.avg_pool2d(stats, tile, stride=tile).flatten(2)[0]
    rms = (jxx + jyy).sqrt()
    coherence = ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt() / (jxx + jyy).clamp_min(1e-12)
    labels = []
    for level, coh in zip(rms.tolist(), coherence.tolist(), strict=True):
        if level < FLAT_GRADIENT_255:
            labels.append("flat")
        else:
            labels.append("edge" if coh >= EDGE_COHERENCE else "texture")
    return labels


def tile_origin(index: int, width: int, tile: int) -> tuple[int, int]:
    """(top, left) pixel of row-major tile `index` in an image `width` pixels wide."""
    cols = width // tile
    return (index // cols) * tile, (index % cols) * tile


def crop_box(height: int, width: int, center_y: int, center_x: int, size: int) -> tuple[int, int, int]:
    """(top, left, size) of a square crop of edge <= `size` centred on a point and kept inside the image."""
    size = min(size, height, width)
    top = min(max(center_y - size // 2, 0), height - size)
    left = min(max(center_x - size // 2, 0), width - size)
    return top, left, size


def triplet(
    degraded: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor, box: tuple[int, int, int]
) -> torch.Tensor:
    """Side-by-side crop degraded | restored | clean, (3, s, 3 s + 8) float in [0, 1] on the CPU, white gaps."""
    top, left, size = box
    parts = [quantise(x[0, :, top : top + size, left : left + size]).cpu() for x in (degraded, restored, clean)]
    gap = torch.ones(3, size, 4)
    return torch.cat([parts[0], gap, parts[1], gap, parts[2]], dim=2)
