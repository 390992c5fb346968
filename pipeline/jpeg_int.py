"""libjpeg's integer JPEG path, exactly, on tensors: the forward pass behind `pipeline.jpeg.jpeg`.

Constants and rounding follow libjpeg(-turbo)'s jccolor.c, jcsample.c, jfdctint.c, jcdctmgr.c, jidctint.c,
jdsample.c and jdcolor.c (8-bit samples, default settings: islow DCT, fancy upsampling, no smoothing).

Two exact number formats, one set of formulas:
- float64 (CPU, CUDA): every value is an integer below 2**53, so sums and products are exact, `x >> b` is
  `floor(x * 2**-b)`, and each 1-D DCT pass (a linear map with integer coefficients, then a rounding shift per
  output) is one matrix multiply. A whole 8x8 block costs four small GEMMs instead of hundreds of elementwise ops.
- int32 (MPS, which has no float64): the same maps as libjpeg's butterflies, elementwise. All intermediate values fit
  in 32 bits, as libjpeg designs them to; `>>` is an arithmetic (flooring) shift.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CONST_BITS = 13
PASS1_BITS = 2
SCALE_BITS = 16  # colour conversion fixed point
ONE_HALF = 1 << (SCALE_BITS - 1)


def _fix(x: float, bits: int = SCALE_BITS) -> int:
    return int(x * (1 << bits) + 0.5)


F0298, F0390, F0541, F0765 = (_fix(v, CONST_BITS) for v in (0.298631336, 0.390180644, 0.541196100, 0.765366865))
F0899, F1175, F1501, F1847 = (_fix(v, CONST_BITS) for v in (0.899976223, 1.175875602, 1.501321110, 1.847759065))
F1961, F2053, F2562, F3072 = (_fix(v, CONST_BITS) for v in (1.961570560, 2.053119869, 2.562915447, 3.072711026))

# DCT passes: (shift of each output, rounded; 0 = exact), in jfdctint's / jidctint's order
FDCT_SHIFTS = {True: (0, 11, 11, 11, 0, 11, 11, 11), False: (2, 15, 15, 15, 2, 15, 15, 15)}
IDCT_SHIFTS = {True: (11,) * 8, False: (18,) * 8}


def shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`x >> bits` (flooring) for int32, or its exact float64 equivalent."""
    return torch.floor(x * 2.0**-bits) if x.is_floating_point() else x >> bits


def descale(x: torch.Tensor, bits: int) -> torch.Tensor:
    """libjpeg's DESCALE: shift right by `bits` > 0, rounding half up."""
    return shift_right(x + (1 << (bits - 1)), bits)


def edge_pad(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Replicate the edge samples of (N, C, H, W) `x` along `dim` (-2 or -1), for float or integer dtypes."""
    if before == after == 0:
        return x
    if x.is_floating_point():  # F.pad's replicate mode takes floats only; it also compiles to plain loops
        return F.pad(x, (before, after, 0, 0) if dim == -1 else (0, 0, before, after), mode="replicate")
    size = x.shape[dim]
    index = torch.arange(-before, size + after, device=x.device).clamp(0, size - 1)
    return x.index_select(dim, index)


def _odd_part(t0, t1, t2, t3):
    """Shared odd part of jfdctint/jidctint (t0..t3 = tmp4..tmp7 forward, y7, y5, y3, y1 inverse)."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * F1175
    t0, t1, t2, t3 = t0 * F0298, t1 * F2053, t2 * F3072, t3 * F1501
    z1, z2 = z1 * -F0899, z2 * -F2562
    z3, z4 = z3 * -F1961 + z5, z4 * -F0390 + z5
    return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def fdct_terms(d: list, first_pass: bool) -> list:
    """One pass of jpeg_fdct_islow on inputs d[0..7] (rows first, then columns), before each output's descale."""
    t0, t1, t2, t3 = d[0] + d[7], d[1] + d[6], d[2] + d[5], d[3] + d[4]
    t7, t6, t5, t4 = d[0] - d[7], d[1] - d[6], d[2] - d[5], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    scale = 1 << PASS1_BITS if first_pass else 1  # pass 1 scales the even outputs up instead of descaling
    z1 = (t12 + t13) * F0541
    o7, o5, o3, o1 = _odd_part(t4, t5, t6, t7)
    return [(t10 + t11) * scale, o1, z1 + t13 * F0765, o3, (t10 - t11) * scale, o5, z1 - t12 * F1847, o7]


def idct_terms(d: list, first_pass: bool) -> list:
    """One pass of jpeg_idct_islow on inputs d[0..7] (columns first, then rows), before the descale."""
    z1 = (d[2] + d[6]) * F0541
    t2, t3 = z1 - d[6] * F1847, z1 + d[2] * F0765
    t0, t1 = (d[0] + d[4]) * (1 << CONST_BITS), (d[0] - d[4]) * (1 << CONST_BITS)
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(d[7], d[5], d[3], d[1])
    return [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]


@functools.cache
def _pass_matrix(kind: str, first_pass: bool, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over axis `dim` (-1 columns, -2 rows) of 8x8 blocks flattened row-major to 64 values, as a float64
    (64, 64) matrix to right-multiply and a (64,) bias: `floor(blocks @ matrix + bias)` is the pass, descale included.

    Each output's shift 2**-s is folded into its column (scaling by a power of two keeps every product and partial
    sum exact) and its rounding offset into the bias.
    """
    terms = fdct_terms if kind == "fdct" else idct_terms
    shifts = torch.tensor((FDCT_SHIFTS if kind == "fdct" else IDCT_SHIFTS)[first_pass], dtype=torch.float64)
    unit = torch.eye(8, dtype=torch.float64).unbind(0)
    one_d = torch.stack(terms(list(unit), first_pass), dim=0) * 2.0 ** -shifts[:, None]  # row k: output k
    offsets = (shifts > 0).to(torch.float64) / 2  # (1 << s) / 2, scaled by 2**-s
    eye = torch.eye(8, dtype=torch.float64)
    if dim == -1:  # out[r, k] = sum_c M[k, c] x[r, c]
        matrix, bias = torch.kron(eye, one_d), offsets.repeat(8)
    else:  # out[k, c] = sum_r M[k, r] x[r, c]
        matrix, bias = torch.kron(one_d, eye), offsets.repeat_interleave(8)
    return matrix.T.contiguous().to(device), bias.to(device)


def _pass(blocks: torch.Tensor, kind: str, dim: int, first_pass: bool) -> torch.Tensor:
    """One 1-D pass over axis `dim` (-1 columns or -2 rows) of (M, 64) flattened 8x8 blocks, descaled."""
    if blocks.is_floating_point():
        matrix, bias = _pass_matrix(kind, first_pass, dim, blocks.device)
        return torch.addmm(bias, blocks, matrix).floor_()
    square = blocks.unflatten(-1, (8, 8))
    terms = (fdct_terms if kind == "fdct" else idct_terms)(list(square.unbind(dim)), first_pass)
    shifts = (FDCT_SHIFTS if kind == "fdct" else IDCT_SHIFTS)[first_pass]
    out = [descale(t, s) if s else t for t, s in zip(terms, shifts, strict=True)]
    return torch.stack(out, dim=dim).flatten(-2)


@functools.cache
def _mix_constants(matrix: tuple, offsets: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`_mix`'s matrix and (C, 1, 1) bias on the device, built once (a copy per call would be a host sync on CUDA)."""
    bias = torch.tensor(offsets, dtype=dtype)[:, None, None]
    return torch.tensor(matrix, dtype=dtype).to(device), bias.to(device)


def _mix(planes: torch.Tensor, matrix: tuple, offsets: tuple) -> torch.Tensor:
    """(N, C, H, W) -> (N, len(matrix), H, W): out_i = sum_j matrix[i][j] * planes_j + offsets[i], exactly.

    float64: one channel GEMM; int32: the sums written out, as libjpeg does them."""
    if planes.is_floating_point():
        weights, bias = _mix_constants(matrix, offsets, planes.dtype, planes.device)
        return torch.einsum("ij,njhw->nihw", weights, planes) + bias
    channels = planes.unbind(1)
    rows = [sum(w * c for w, c in zip(row, channels, strict=True) if w) for row in matrix]
    return torch.stack([row + offset for row, offset in zip(rows, offsets, strict=True)], dim=1)


# jccolor.c's RGB -> YCbCr and jdcolor.c's (Cb - 128, Cr - 128) -> RGB increments, one row per output
_TO_YCC = (
    (_fix(0.29900), _fix(0.58700), _fix(0.11400)),
    (-_fix(0.16874), -_fix(0.33126), _fix(0.5)),
    (_fix(0.5), -_fix(0.41869), -_fix(0.08131)),
)
_TO_YCC_OFFSETS = (ONE_HALF, (128 << SCALE_BITS) + ONE_HALF - 1, (128 << SCALE_BITS) + ONE_HALF - 1)
_TO_RGB = ((0, _fix(1.40200)), (-_fix(0.34414), -_fix(0.71414)), (_fix(1.77200), 0))


def rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB 0..255 -> YCbCr (JFIF), as jccolor.c."""
    return shift_right(_mix(rgb, _TO_YCC, _TO_YCC_OFFSETS), SCALE_BITS)


def ycc_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) YCbCr -> RGB 0..255, as jdcolor.c's tables."""
    chroma = ycc[:, 1:] - 128
    return (ycc[:, :1] + shift_right(_mix(chroma, _TO_RGB, (ONE_HALF,) * 3), SCALE_BITS)).clamp(0, 255)


def downsample(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W), H and W multiples of the factors -> subsampled, as jcsample.c (alternating bias)."""
    fv, fh = factors
    n, c, h, w = plane.shape
    if plane.is_floating_point():  # the mean of fv * fh integers times a power of two: exact
        total = F.avg_pool2d(plane, factors) * (fv * fh)
    else:
        total = plane.reshape(n, c, h // fv, fv, w // fh, fh).sum(dim=(3, 5))
    bias = torch.arange(w // fh, device=plane.device) % 2  # per output column: 0,1,... (h2v1); 1,2,... (h2v2)
    if fv == 2:
        return shift_right(total + 1 + bias, 2)
    return shift_right(total + bias, 1)


def upsample(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) chroma -> (N, C, fv*h, fh*w), libjpeg's fancy (triangle) upsampling with edge replication."""
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
        even, odd = shift_right(left + 8, 4), shift_right(right + 7, 4)
    else:
        even, odd = shift_right(left + 1, 2), shift_right(right + 2, 2)
    return torch.stack([even, odd], dim=-1).flatten(-2, -1)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N * C * h/8 * w/8, 64): every 8x8 block of each sample, flattened row-major."""
    n, c, h, w = plane.shape
    return plane.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 64)


def _unblocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return blocks.reshape(n, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise, dequantise, inverse DCT of an (N, C, h, w) plane, h and w multiples of 8;
    `table` (N, 8, 8) in the plane's dtype."""
    n, c, h, w = plane.shape
    blocks = _blocks(plane - 128)
    coef = _pass(_pass(blocks, "fdct", -1, True), "fdct", -2, False)  # scaled up by 8
    table = table.reshape(n, 1, 64).expand(n, c * (h // 8) * (w // 8), 64).reshape(-1, 64)  # per block
    level = _quantise(coef, table * 8)
    pixels = _pass(_pass(level * table, "idct", -2, True), "idct", -1, False) + 128
    return _unblocks(pixels.clamp_(0, 255), plane.shape)


def _quantise(coef: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """jcdctmgr.c: round |coef| / divisor half up, keep the sign (exact in float64: see the module docstring)."""
    rounded = coef.abs() + shift_right(divisor, 1)
    if coef.is_floating_point():
        return rounded.div_(divisor).floor_().mul_(coef.sign())
    return torch.div(rounded, divisor, rounding_mode="floor") * coef.sign()


def encode(rgb: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) RGB 0..255 (int32 or float64), (N, 2, 8, 8) tables of that dtype -> the luma and chroma planes
    after quantisation and the inverse DCT, still padded to whole blocks (chroma still subsampled).

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
    return luma, chroma


def decode(luma: torch.Tensor, chroma: torch.Tensor, height: int, width: int, factors: tuple[int, int]) -> torch.Tensor:
    """`encode`'s planes -> (N, 3, height, width) RGB 0..255: chroma upsampled, planes cropped, YCbCr -> RGB."""
    if factors != (1, 1):
        chroma = chroma[..., : -(-height // factors[0]), : -(-width // factors[1])]
        chroma = upsample(chroma, factors)
    ycc = torch.cat([luma[..., :height, :width], chroma[..., :height, :width]], dim=1)
    return ycc_to_rgb(ycc)


def codec(rgb: torch.Tensor, tables: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) RGB 0..255 (int32 or float64), (N, 2, 8, 8) tables of that dtype, chroma factors -> decoded RGB
    in that dtype, as libjpeg's compressor then decompressor would give."""
    return decode(*encode(rgb, tables, factors), rgb.shape[-2], rgb.shape[-1], factors)
