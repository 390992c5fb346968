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
import importlib.util
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline import jpeg_int
from pipeline.sync import to_device_async

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


CODECS = ("auto", "compiled", "float64", "int32")


def resolve_codec(name: str, device: torch.device) -> str:
    """`auto` -> `compiled` on CUDA with Triton (the float64 codec fused by torch.compile: few kernel launches),
    `int32` on MPS (no float64 there), else `float64` (eager: on a CPU a cold compile costs minutes, more than it
    saves in a short run); an explicit name passes through. All are bit-exact to libjpeg; they differ in speed only
    (`python -m bench degradation`). `compiled` also runs on the CPU (Inductor's C++ backend, needs a compiler).
    """
    if name not in CODECS:
        raise ValueError(f"unknown degrade.codec '{name}': choose one of {', '.join(CODECS)}")
    if name != "auto":
        return name
    if device.type == "mps":
        return "int32"
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "compiled"
    return "float64"


def jpeg(
    image: torch.Tensor,
    quality: torch.Tensor,
    subsampling: torch.Tensor | Sequence[int] | None = None,
    codec: str = "auto",
) -> torch.Tensor:
    """Encode + decode each sample of `image` as libjpeg would; differentiable through a float surrogate.

    `image` is first rounded to 8 bits (a JPEG encoder only sees 8-bit pixels). `subsampling` (per-sample codes)
    defaults to 4:2:0, libjpeg's and Pillow's default. Samples are grouped by subsampling mode (at most three
    groups), never looped. Pass the codes as a host sequence (the trainer does) and nothing here reads the device;
    a device tensor is read once to size the groups.
    """
    n = image.shape[0]
    codes = [SUBSAMPLING["4:2:0"]] * n if subsampling is None else subsampling
    codes = codes.tolist() if isinstance(codes, torch.Tensor) else list(codes)  # host codes: no device read
    tables = quant_tables(quality.to(image.device))
    kind = resolve_codec(codec, image.device)
    groups = {code: [i for i, c in enumerate(codes) if c == code] for code in sorted(set(codes))}
    if len(groups) == 1:
        code = codes[0] if codes else SUBSAMPLING["4:2:0"]
        return _jpeg_group(image, tables, _FACTORS[code], kind)
    out = torch.empty_like(image)
    for code, members in groups.items():
        index = host_index(members, image.device)
        out[index] = _jpeg_group(image[index], tables[index], _FACTORS[code], kind)
    return out


def host_index(members: Sequence[int], device: torch.device) -> torch.Tensor:
    """An index tensor on `device` from host integers, copied without a sync."""
    return to_device_async(torch.tensor(members, dtype=torch.int64), device)


def _jpeg_group(image: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int], kind: str) -> torch.Tensor:
    with torch.no_grad():
        exact = _exact(image.detach(), tables, factors, kind)
    if not image.requires_grad:
        return exact
    soft = _soft_codec(image, tables.to(image.dtype), factors)
    return soft + (exact - soft).detach()


def _exact(image: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int], kind: str) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> libjpeg's decoded pixels, in the image's dtype, through the `kind` codec."""
    height, width = image.shape[-2:]
    if kind == "compiled" and not _COMPILE_FAILED:
        try:
            encode, decode = _compiled()
            torch._dynamo.maybe_mark_dynamic(image, 0)  # kernels per (factors, H, W) serve any group size
            with torch._dynamo.config.patch(recompile_limit=COMPILED_VARIANTS):
                return decode(*encode(image, tables, factors), height, width, factors, image.dtype)
        except Exception as err:  # noqa: BLE001 (a compiler fault must not stop training; eager is exact too)
            _COMPILE_FAILED.append(err)
            warnings.warn(
                f"degrade.codec=compiled failed ({type(err).__name__}: {err}); using float64 eager", stacklevel=2
            )
    work = torch.int32 if kind == "int32" else torch.float64
    return _decode_unit(*_encode_unit(image, tables, factors, work), height, width, factors, image.dtype)


_COMPILE_FAILED: list[Exception] = []
COMPILED_VARIANTS = 64  # (subsampling, H, W) variants each compiled function may hold (Dynamo's default: 8)


def _encode_unit(image, tables, factors, work=torch.float64):
    pixels = image.clamp(0, 1).mul(255).round().to(work)
    return jpeg_int.encode(pixels, tables.to(work), factors)


def _decode_unit(luma, chroma, height, width, factors, dtype):
    return jpeg_int.decode(luma, chroma, height, width, factors).to(dtype).div(255)


@functools.cache
def _compiled():
    """`_encode_unit` and `_decode_unit` compiled: Inductor fuses each into a few loops (C++ on the CPU, Triton on
    CUDA). Compiled once per process; Inductor's on-disk cache makes later processes start in seconds."""
    return torch.compile(_encode_unit), torch.compile(_decode_unit)


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
