"""libjpeg's integer JPEG path on int32 tensors: the exact forward pass behind `pipeline.jpeg.jpeg`.

Constants and rounding follow libjpeg(-turbo)'s jccolor.c, jcsample.c, jfdctint.c, jcdctmgr.c, jidctint.c,
jdsample.c and jdcolor.c (8-bit samples, default settings: islow DCT, fancy upsampling, no smoothing). All
intermediate values fit in 32 bits, as libjpeg designs them to; `>>` is an arithmetic (flooring) shift.
"""

from __future__ import annotations

import torch

CONST_BITS = 13
PASS1_BITS = 2
SCALE_BITS = 16  # colour conversion fixed point
ONE_HALF = 1 << (SCALE_BITS - 1)


def _fix(x: float, bits: int = SCALE_BITS) -> int:
    return int(x * (1 << bits) + 0.5)


F0298, F0390, F0541, F0765 = (_fix(v, CONST_BITS) for v in (0.298631336, 0.390180644, 0.541196100, 0.765366865))
F0899, F1175, F1501, F1847 = (_fix(v, CONST_BITS) for v in (0.899976223, 1.175875602, 1.501321110, 1.847759065))
F1961, F2053, F2562, F3072 = (_fix(v, CONST_BITS) for v in (1.961570560, 2.053119869, 2.562915447, 3.072711026))


def edge_pad(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Replicate the edge samples of `x` along `dim` (any dtype, unlike F.pad's replicate mode)."""
    size = x.shape[dim]
    index = torch.arange(-before, size + after, device=x.device).clamp(0, size - 1)
    return x.index_select(dim, index)


def _descale(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x + (1 << (bits - 1))) >> bits


def _odd_part(t0, t1, t2, t3):
    """Shared odd part of jfdctint/jidctint (t0..t3 = tmp4..tmp7 forward, y7, y5, y3, y1 inverse)."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * F1175
    t0, t1, t2, t3 = t0 * F0298, t1 * F2053, t2 * F3072, t3 * F1501
    z1, z2 = z1 * -F0899, z2 * -F2562
    z3, z4 = z3 * -F1961 + z5, z4 * -F0390 + z5
    return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def _fdct_1d(v: torch.Tensor, dim: int, first_pass: bool) -> torch.Tensor:
    """One pass of jpeg_fdct_islow along `dim` (rows first, then columns)."""
    d = v.unbind(dim)
    t0, t1, t2, t3 = d[0] + d[7], d[1] + d[6], d[2] + d[5], d[3] + d[4]
    t7, t6, t5, t4 = d[0] - d[7], d[1] - d[6], d[2] - d[5], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first_pass:
        out0, out4 = (t10 + t11) << PASS1_BITS, (t10 - t11) << PASS1_BITS
        shift = CONST_BITS - PASS1_BITS
    else:
        out0, out4 = _descale(t10 + t11, PASS1_BITS), _descale(t10 - t11, PASS1_BITS)
        shift = CONST_BITS + PASS1_BITS
    z1 = (t12 + t13) * F0541
    out2, out6 = _descale(z1 + t13 * F0765, shift), _descale(z1 - t12 * F1847, shift)
    o7, o5, o3, o1 = (_descale(x, shift) for x in _odd_part(t4, t5, t6, t7))
    return torch.stack([out0, o1, out2, o3, out4, o5, out6, o7], dim=dim)


def _idct_1d(v: torch.Tensor, dim: int, first_pass: bool) -> torch.Tensor:
    """One pass of jpeg_idct_islow along `dim` (columns first, then rows); the last pass also range-limits."""
    d = v.unbind(dim)
    z1 = (d[2] + d[6]) * F0541
    t2, t3 = z1 - d[6] * F1847, z1 + d[2] * F0765
    t0, t1 = (d[0] + d[4]) << CONST_BITS, (d[0] - d[4]) << CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(d[7], d[5], d[3], d[1])
    outs = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
    shift = CONST_BITS - PASS1_BITS if first_pass else CONST_BITS + PASS1_BITS + 3
    out = torch.stack([_descale(x, shift) for x in outs], dim=dim)
    return out if first_pass else (out + 128).clamp(0, 255)


def rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) int32 RGB 0..255 -> int32 YCbCr (JFIF), as jccolor.c."""
    r, g, b = rgb.unbind(1)
    offset = (128 << SCALE_BITS) + ONE_HALF - 1
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + ONE_HALF) >> SCALE_BITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset) >> SCALE_BITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset) >> SCALE_BITS
    return torch.stack([y, cb, cr], dim=1)


def ycc_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) int32 YCbCr -> int32 RGB 0..255, as jdcolor.c's tables."""
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    r = y + ((_fix(1.40200) * cr + ONE_HALF) >> SCALE_BITS)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + ONE_HALF) >> SCALE_BITS)
    b = y + ((_fix(1.77200) * cb + ONE_HALF) >> SCALE_BITS)
    return torch.stack([r, g, b], dim=1).clamp(0, 255)


def downsample(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) int32, H and W multiples of the factors -> subsampled, as jcsample.c (alternating bias)."""
    fv, fh = factors
    n, c, h, w = plane.shape
    total = plane.reshape(n, c, h // fv, fv, w // fh, fh).sum(dim=(3, 5))
    bias = torch.arange(w // fh, device=plane.device) % 2  # per output column: 0,1,... (h2v1); 1,2,... (h2v2)
    if fv == 2:
        return (total + 1 + bias) >> 2
    return (total + bias) >> 1


def upsample(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) int32 chroma -> (N, C, fv*h, fh*w), libjpeg's fancy (triangle) upsampling with edge replication."""
    fv, fh = factors
    if plane.shape[-1] <= 2:  # libjpeg falls back to plain replication for such narrow planes
        return plane.repeat_interleave(fv, dim=-2).repeat_interleave(fh, dim=-1)
    if fv == 2:
        padded = edge_pad(plane, -2, 1, 1)
        above, below = 3 * plane + padded[..., :-2, :], 3 * plane + padded[..., 2:, :]
        plane = torch.stack([above, below], dim=-2).flatten(-3, -2)  # colsums, scaled by 4
    padded = edge_pad(plane, -1, 1, 1)
    left, right = 3 * plane + padded[..., :-2], 3 * plane + padded[..., 2:]
    if fv == 2:
        even, odd = (left + 8) >> 4, (right + 7) >> 4
    else:
        even, odd = (left + 1) >> 2, (right + 2) >> 2
    return torch.stack([even, odd], dim=-1).flatten(-2, -1)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (8, 8, M): block rows, block columns, then every block, so 1-D passes read contiguous rows."""
    n, c, h, w = plane.shape
    return plane.reshape(n, c, h // 8, 8, w // 8, 8).permute(3, 5, 0, 1, 2, 4).reshape(8, 8, -1)


def _unblocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return blocks.reshape(8, 8, n, c, h // 8, w // 8).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h, w)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise, dequantise, inverse DCT of an (N, C, h, w) int32 plane, h and w multiples of 8."""
    blocks = _blocks(plane - 128)
    table = table.permute(1, 2, 0).repeat_interleave(blocks.shape[-1] // plane.shape[0], dim=-1)  # (8, 8, M)
    coef = _fdct_1d(_fdct_1d(blocks, 1, True), 0, False)  # scaled up by 8
    divisor = table * 8
    level = torch.div(coef.abs() + divisor // 2, divisor, rounding_mode="floor") * coef.sign()
    return _unblocks(_idct_1d(_idct_1d(level * table, 0, True), 1, False), plane.shape)


def codec(rgb: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) int32 RGB 0..255, (N, 2, 8, 8) tables, chroma factors -> decoded int32 RGB.

    Padding as libjpeg's compressor does it: columns replicated to whole MCUs before downsampling; rows replicated
    to a whole row group before downsampling, then each plane's last row replicated to whole blocks.
    """
    _, _, height, width = rgb.shape
    padded = edge_pad(edge_pad(rgb, -2, 0, -height % factors[0]), -1, 0, -width % (8 * factors[1]))
    ycc = rgb_to_ycc(padded)
    luma, chroma = ycc[:, :1], ycc[:, 1:]
    if factors != (1, 1):
        chroma = downsample(chroma, factors)
    luma = _code_plane(edge_pad(luma, -2, 0, -luma.shape[-2] % 8), tables[:, 0])
    chroma = _code_plane(edge_pad(chroma, -2, 0, -chroma.shape[-2] % 8), tables[:, 1])
    if factors != (1, 1):
        chroma = chroma[..., : -(-height // factors[0]), : -(-width // factors[1])]
        chroma = upsample(chroma, factors)
    ycc = torch.cat([luma[..., :height, :width], chroma[..., :height, :width]], dim=1)
    return ycc_to_rgb(ycc)
