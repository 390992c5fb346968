"""Degradation on the device: Gaussian noise, then 8-bit quantisation, then JPEG (once or twice).

Contract (STYLE.md section 3): `degraded = degrade(clean, params)` with
- `clean`: (N, 3, H, W) float32 RGB in [0, 1] on any device; it is never modified;
- `params` from `sample_params` (or built by hand), all (N,) tensors on the same device:
  `sigma_255` float (0 = no noise), `quality` int (0 = no JPEG), `subsampling` int (`jpeg.SUBSAMPLING` codes),
  `quality2` int (0 = no second JPEG), `shift_y`, `shift_x` int 0..7 (grid offset of the second JPEG), and
  optionally `unclipped` bool (noise-only samples left as float AWGN, neither clipped nor quantised);
- `degraded`: (N, 3, H, W) float32 in [0, 1] (outside it only where `unclipped`); differentiable w.r.t. `clean`
  (straight-through rounding).
A sample with sigma 0 and no JPEG is returned exactly as given.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from pipeline.config import DegradeConfig
from pipeline.jpeg import SUBSAMPLING, jpeg

PARAM_KEYS = ("sigma_255", "quality", "subsampling", "quality2", "shift_y", "shift_x")


@dataclass(frozen=True)
class Ranges:
    """Degradation ranges in force at one point of training."""

    sigma_min_255: float
    sigma_max_255: float
    quality_min: int
    quality_max: int


def ranges_at(cfg: DegradeConfig, progress: float) -> Ranges:
    """The curriculum hook: ranges at training progress 0..1, growing from light to the full range.

    The heavy end opens linearly from `curriculum_start` of the full span to all of it over the first
    `curriculum_fraction` of training; without the curriculum the full ranges hold throughout.
    """
    span = 1.0
    if cfg.curriculum:
        ramp = min(1.0, max(0.0, progress) / max(cfg.curriculum_fraction, 1e-9))
        span = cfg.curriculum_start + (1.0 - cfg.curriculum_start) * ramp
    sigma_max = cfg.sigma_min_255 + span * (cfg.sigma_max_255 - cfg.sigma_min_255)
    quality_min = round(cfg.quality_max - span * (cfg.quality_max - cfg.quality_min))
    return Ranges(cfg.sigma_min_255, sigma_max, quality_min, cfg.quality_max)


def check_config(cfg: DegradeConfig) -> None:
    """Fail early, with the offending values, on a configuration that cannot be sampled."""
    mix = (cfg.p_noise_only, cfg.p_jpeg_only, cfg.p_both, cfg.p_neither)
    if min(mix) < 0 or not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise ValueError(f"degrade mix probabilities must be >= 0 and sum to 1, got {mix}")
    if not 0 <= cfg.sigma_min_255 <= cfg.sigma_max_255:
        raise ValueError(f"need 0 <= sigma_min_255 <= sigma_max_255, got {cfg.sigma_min_255}, {cfg.sigma_max_255}")
    if not 1 <= cfg.quality_min <= cfg.quality_max <= 100:
        raise ValueError(f"need 1 <= quality_min <= quality_max <= 100, got {cfg.quality_min}, {cfg.quality_max}")
    unknown = set(cfg.subsampling) - set(SUBSAMPLING)
    if unknown or not cfg.subsampling or min(cfg.subsampling.values()) < 0 or sum(cfg.subsampling.values()) <= 0:
        raise ValueError(f"subsampling weights must be >= 0 over {sorted(SUBSAMPLING)}, got {cfg.subsampling}")
    for name in ("p_double_jpeg", "p_unclipped"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")


def sample_params(
    n: int, cfg: DegradeConfig, generator: torch.Generator, device: torch.device, progress: float = 1.0
) -> dict[str, torch.Tensor]:
    """Draw per-sample degradation parameters on `device` (see the module docstring for the keys)."""
    check_config(cfg)
    ranges = ranges_at(cfg, progress)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    def integers(low: int, high: int) -> torch.Tensor:  # inclusive
        return torch.randint(low, high + 1, (n,), generator=generator, device=device)

    mix = _constant((cfg.p_noise_only, cfg.p_jpeg_only, cfg.p_both, cfg.p_neither), torch.float32, device)
    kind = torch.multinomial(mix, n, replacement=True, generator=generator)  # 0 noise, 1 jpeg, 2 both, 3 neither
    has_noise, has_jpeg = (kind == 0) | (kind == 2), (kind == 1) | (kind == 2)
    sigma = uniform(ranges.sigma_min_255, ranges.sigma_max_255) * has_noise
    quality = integers(ranges.quality_min, ranges.quality_max) * has_jpeg
    codes = _constant(tuple(SUBSAMPLING[name] for name in cfg.subsampling), torch.int64, device)
    weights = _constant(tuple(cfg.subsampling.values()), torch.float32, device)
    subsampling = codes[torch.multinomial(weights, n, replacement=True, generator=generator)]
    double = torch.rand(n, generator=generator, device=device) < cfg.p_double_jpeg
    quality2 = integers(ranges.quality_min, ranges.quality_max) * (double & has_jpeg)
    unclipped = (torch.rand(n, generator=generator, device=device) < cfg.p_unclipped) & has_noise & ~has_jpeg
    return {
        "sigma_255": sigma,
        "quality": quality,
        "subsampling": subsampling,
        "quality2": quality2,
        "shift_y": integers(0, 7),
        "shift_x": integers(0, 7),
        "unclipped": unclipped,
    }


@functools.cache
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small constant tensors, copied to the device once (each pageable copy would be a host-device sync)."""
    return torch.tensor(values, dtype=dtype).to(device)


def sample_and_degrade(
    clean: torch.Tensor, cfg: DegradeConfig, generator: torch.Generator, progress: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's call: draw parameters for the batch, degrade it, return both."""
    params = sample_params(clean.shape[0], cfg, generator, clean.device, progress)
    return degrade(clean, params, generator), params


def degrade(
    clean: torch.Tensor, params: dict[str, torch.Tensor], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noise, clip, 8-bit quantisation, JPEG, optional shifted second JPEG; per-sample, batched, no sample loop."""
    sigma = params["sigma_255"].to(clean.dtype)[:, None, None, None]
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    awgn = clean + noise * (sigma / 255.0)
    noisy = awgn.clamp(0, 1)
    quantised = noisy + ((noisy * 255).round() / 255 - noisy).detach()
    # one host-device sync: how many samples get a first and a second JPEG
    has_jpeg, has_second = params["quality"] > 0, params["quality2"] > 0
    n_jpeg, n_second = torch.stack([has_jpeg.sum(), has_second.sum()]).tolist()
    out = quantised
    if n_jpeg:
        index = torch.argsort(has_jpeg.int(), descending=True, stable=True)[:n_jpeg]
        out = out.index_copy(0, index, jpeg(out[index], params["quality"][index], params["subsampling"][index]))
    if n_second:
        index = torch.argsort(has_second.int(), descending=True, stable=True)[:n_second]
        shifted = _shifted_jpeg(
            out[index], params["quality2"][index], params["subsampling"][index], params["shift_y"][index],
            params["shift_x"][index],
        )  # fmt: skip
        out = out.index_copy(0, index, shifted)
    if "unclipped" in params:
        out = torch.where(params["unclipped"][:, None, None, None], awgn, out)
    untouched = ((params["sigma_255"] == 0) & (params["quality"] == 0))[:, None, None, None]
    return torch.where(untouched, clean, out)


def _shifted_jpeg(
    image: torch.Tensor, quality: torch.Tensor, subsampling: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor
) -> torch.Tensor:
    """JPEG with the block grid moved by (shift_y, shift_x) per sample, as after a crop between two saves.

    Each sample is embedded in a canvas 8 px larger at its (shift_y, shift_x) offset, the canvas edge-replicated
    around it, compressed, and cut back out; one gather per axis, no loop over samples.
    """
    n, c, h, w = image.shape
    rows = (torch.arange(h + 8, device=image.device)[None] - shift_y[:, None]).clamp(0, h - 1)  # (N, H+8)
    cols = (torch.arange(w + 8, device=image.device)[None] - shift_x[:, None]).clamp(0, w - 1)
    canvas = image.gather(2, rows[:, None, :, None].expand(n, c, h + 8, w)).gather(
        3, cols[:, None, None, :].expand(n, c, h + 8, w + 8)
    )
    coded = jpeg(canvas, quality, subsampling)
    rows_back = (torch.arange(h, device=image.device)[None] + shift_y[:, None])[:, None, :, None]
    cols_back = (torch.arange(w, device=image.device)[None] + shift_x[:, None])[:, None, None, :]
    return coded.gather(2, rows_back.expand(n, c, h, w + 8)).gather(3, cols_back.expand(n, c, h, w))
