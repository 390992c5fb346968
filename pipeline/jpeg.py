"""JPEG compression on the device that follows libjpeg(-turbo), as Pillow uses it, step by step.

Forward pass (no gradient): the integer arithmetic of libjpeg's default path, batched over samples:
RGB -> YCbCr with libjpeg's 16-bit fixed-point constants, edge replication to whole MCUs, chroma downsampling with
libjpeg's alternating rounding bias, the accurate integer DCT (`jfdctint`), quantisation with rounding by the IJG
tables scaled for the quality exactly as `jpeg_set_quality(..., force_baseline=TRUE)` does, the accurate integer
inverse DCT (`jidctint`), "fancy" (triangle) chroma upsampling, and libjpeg's YCbCr -> RGB tables.

Backward pass: a float surrogate of the same codec (orthonormal DCT, rounding as identity, bilinear-like chroma
resampling) carries the gradient; its output is replaced by the exact one in the forward pass
(`soft + (exact - soft).detach()`), so the op is differentiable and still bit-faithful.

Images are (N, 3, H, W) float32 RGB in [0, 1] on any device; quality is (N,) integer in 1..100; subsampling is a
per-sample code from `SUBSAMPLING`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pipeline import jpeg_int

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_FACTORS = {0: (1, 1), 1: (1, 2), 2: (2, 2)}  # code -> (vertical, horizontal) chroma factor

STD_LUMA = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
STD_CHROMA = [
    [17, 18, 24, 47, 99, 99, 99, 99],
    [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99],
    [47, 66, 99, 99, 99, 99, 99, 99],
] + [[99] * 8] * 4


@functools.cache
def _base_tables(device: torch.device) -> torch.Tensor:
    return torch.tensor([STD_LUMA, STD_CHROMA], dtype=torch.int32).to(device)


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(N,) integer quality 1..100 -> (N, 2, 8, 8) int32 luma/chroma tables, as libjpeg's `jpeg_set_quality`."""
    quality = quality.to(torch.int32).clamp(1, 100)
    scale = torch.where(quality < 50, 5000 // quality, 200 - 2 * quality)  # jpeg_quality_scaling
    tables = (_base_tables(quality.device)[None] * scale[:, None, None, None] + 50) // 100
    return tables.clamp(1, 255)  # force_baseline, as Pillow asks for


def jpeg(image: torch.Tensor, quality: torch.Tensor, subsampling: torch.Tensor | None = None) -> torch.Tensor:
    """Encode + decode each sample of `image` as libjpeg would; differentiable through a float surrogate.

    `image` is first rounded to 8 bits (a JPEG encoder only sees 8-bit pixels). `subsampling` defaults to 4:2:0,
    libjpeg's and Pillow's default. Samples are grouped by subsampling mode (at most three groups), never looped;
    the group sizes are the one host-device sync.
    """
    n = image.shape[0]
    if subsampling is None:
        subsampling = torch.full((n,), SUBSAMPLING["4:2:0"], device=image.device)
    tables = quant_tables(quality.to(image.device))
    order = torch.argsort(subsampling, stable=True)
    counts = torch.stack([(subsampling == code).sum() for code in _FACTORS]).tolist()
    out = torch.empty_like(image)
    start = 0
    for code, count in enumerate(counts):
        index, start = order[start : start + count], start + count
        if count:
            out[index] = _jpeg_group(image[index], tables[index], _FACTORS[code])
    return out


def _jpeg_group(image: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    with torch.no_grad():
        pixels = image.detach().clamp(0, 1).mul(255).round().to(torch.int32)
        exact = jpeg_int.codec(pixels, tables, factors).to(image.dtype).div_(255)
    if not image.requires_grad:
        return exact
    soft = _soft_codec(image, tables.to(image.dtype), factors)
    return soft + (exact - soft).detach()


# --- float surrogate: the gradient path ----------------------------------------------------------------------------

_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(8, device=device, dtype=dtype)
    basis = torch.cos((2 * k[None, :] + 1) * k[:, None] * torch.pi / 16) * 0.5
    basis[0] /= 2**0.5
    return basis  # (8, 8) orthonormal DCT-II: coefficients = B @ block @ B.T


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def _soft_codec(image: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    n, _, height, width = image.shape
    ycc = torch.einsum("ij,njhw->nihw", _RGB_TO_YCC.to(image), image * 255)
    ycc = ycc + torch.tensor([-128.0, 0.0, 0.0], device=image.device, dtype=image.dtype)[None, :, None, None]
    luma = _soft_plane(ycc[:, :1], tables[:, 0])
    chroma = F.avg_pool2d(ycc[:, 1:], kernel_size=factors, ceil_mode=True) if factors != (1, 1) else ycc[:, 1:]
    chroma = _soft_plane(chroma, tables[:, 1])
    if factors != (1, 1):
        chroma = F.interpolate(chroma, scale_factor=factors, mode="bilinear", align_corners=False)
    ycc = torch.cat([luma, chroma[:, :, :height, :width]], dim=1)
    inverse = _YCC_TO_RGB.to(image)
    rgb = torch.einsum("ij,njhw->nihw", inverse, ycc + torch.tensor([128.0, 0, 0], device=image.device)[:, None, None])
    return rgb.clamp(0, 255) / 255


def _soft_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) level-shifted float plane -> quantised/dequantised plane through 8x8 DCT blocks."""
    n, c, h, w = plane.shape
    padded = F.pad(plane, (0, -w % 8, 0, -h % 8), mode="replicate")
    blocks = padded.unfold(2, 8, 8).unfold(3, 8, 8)  # (N, C, h/8, w/8, 8, 8)
    basis = _dct_matrix(plane.device, plane.dtype)
    table = table[:, None, None, None]
    coef = basis @ blocks @ basis.T
    coef = _round_ste(coef / table) * table
    blocks = basis.T @ coef @ basis
    out = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, padded.shape[2], padded.shape[3])
    return out[:, :, :h, :w]
