"""Degradation on the device: Gaussian noise, then 8-bit quantisation, then JPEG (once or twice).

Contract: `degraded = degrade(clean, params)` with
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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, cast

import torch

from pipeline.config import DegradeConfig
from pipeline.jpeg import SUBSAMPLING, host_index, jpeg
from pipeline.sync import host_side, to_device_async


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


class DegradeParams(TypedDict, total=False):
    """Per-sample degradation parameters, all (N,) tensors (see the module docstring); `unclipped` is optional."""

    sigma_255: torch.Tensor
    quality: torch.Tensor
    subsampling: torch.Tensor
    quality2: torch.Tensor
    shift_y: torch.Tensor
    shift_x: torch.Tensor
    unclipped: torch.Tensor


PARAM_KEYS = tuple(k for k in DegradeParams.__annotations__ if k != "unclipped")  # one sample's scalar values


def param_row(params: DegradeParams, index: int) -> dict[str, float]:
    """Sample `index`'s parameters as host scalars, keyed by `PARAM_KEYS` (a device read: outside the step only)."""
    return {key: params[key][index].item() for key in PARAM_KEYS}  # type: ignore[literal-required]


def sample_params(
    n: int, cfg: DegradeConfig, generator: torch.Generator, device: torch.device | None = None, progress: float = 1.0
) -> DegradeParams:
    """Draw per-sample degradation parameters on the host, from the CPU `generator`; on `device` when given.

    Drawing on the host keeps the trainer's step free of device reads: group sizes (which samples get a JPEG, which
    subsampling, which a second JPEG) are known before anything runs on the device (`to_device`).
    """
    check_config(cfg)
    ranges = ranges_at(cfg, progress)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def integers(low: int, high: int) -> torch.Tensor:  # inclusive
        return torch.randint(low, high + 1, (n,), generator=generator)

    mix = torch.tensor((cfg.p_noise_only, cfg.p_jpeg_only, cfg.p_both, cfg.p_neither))
    kind = torch.multinomial(mix, n, replacement=True, generator=generator)  # 0 noise, 1 jpeg, 2 both, 3 neither
    has_noise, has_jpeg = (kind == 0) | (kind == 2), (kind == 1) | (kind == 2)
    sigma = uniform(ranges.sigma_min_255, ranges.sigma_max_255) * has_noise
    quality = integers(ranges.quality_min, ranges.quality_max) * has_jpeg
    codes = torch.tensor([SUBSAMPLING[name] for name in cfg.subsampling])
    weights = torch.tensor(list(cfg.subsampling.values()), dtype=torch.float32)
    subsampling = codes[torch.multinomial(weights, n, replacement=True, generator=generator)]
    double = torch.rand(n, generator=generator) < cfg.p_double_jpeg
    quality2 = integers(ranges.quality_min, ranges.quality_max) * (double & has_jpeg)
    unclipped = (torch.rand(n, generator=generator) < cfg.p_unclipped) & has_noise & ~has_jpeg
    shift_y, shift_x = integers(0, 7), integers(0, 7)
    params = DegradeParams(
        sigma_255=sigma,
        quality=quality,
        subsampling=subsampling,
        quality2=quality2,
        shift_y=shift_y,
        shift_x=shift_x,
        unclipped=unclipped,
    )
    return params if device is None else to_device(params, device)


def to_device(params: DegradeParams, device: torch.device) -> DegradeParams:
    """Host parameters on `device`, copied without a sync."""
    return cast(DegradeParams, {k: to_device_async(cast(torch.Tensor, v), device) for k, v in params.items()})


def sample_and_degrade(
    clean: torch.Tensor,
    cfg: DegradeConfig,
    generator: torch.Generator,
    progress: float = 1.0,
    host_generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, DegradeParams]:
    """The trainer's call: draw parameters for the batch on the host (from `host_generator`, or from `generator`
    when that is a CPU generator), degrade the batch on its device (noise from `generator`), return both. Nothing
    here reads the device, so a CUDA step never waits for the GPU."""
    if host_generator is None:
        if generator.device.type != "cpu":
            raise ValueError("sample_and_degrade needs a CPU host_generator when the noise generator is on a device")
        host_generator = generator
    host = sample_params(clean.shape[0], cfg, host_generator, progress=progress)
    params = to_device(host, clean.device)
    return degrade(clean, params, generator, host=host, codec=cfg.codec), params


def degrade(
    clean: torch.Tensor,
    params: DegradeParams,
    generator: torch.Generator | None = None,
    host: DegradeParams | None = None,
    codec: str = "auto",
) -> torch.Tensor:
    """Noise, clip, 8-bit quantisation, JPEG, optional shifted second JPEG; per-sample, batched, no sample loop.

    `host` is the same parameters on the CPU: it sizes the JPEG groups without reading the device (else `params`
    is read back, a few small reads: fine outside the training step). `codec` picks the JPEG implementation
    (`pipeline.jpeg.resolve_codec`).
    """
    host = params if host is None else host
    sigma = params["sigma_255"].to(clean.dtype)[:, None, None, None]
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    awgn = torch.addcmul(clean, noise, sigma, value=1 / 255.0)
    noisy = awgn.clamp(0, 1)
    quantised = (noisy * 255).round() / 255
    if clean.requires_grad:
        quantised = noisy + (quantised - noisy).detach()  # straight through
    out = quantised
    with host_side():  # host tensors only: no device read
        first, second = (host[key].cpu().nonzero().flatten().tolist() for key in ("quality", "quality2"))
        codes = host["subsampling"].cpu().tolist()
        unclipped = "unclipped" in host and bool(host["unclipped"].any())
        untouched = bool(((host["sigma_255"] == 0) & (host["quality"] == 0)).any())
    if first:
        out = _on_subset(out, first, lambda x, i: jpeg(x, params["quality"][i], [codes[j] for j in first], codec))
    if second:
        subset = [codes[j] for j in second]
        out = _on_subset(
            out,
            second,
            lambda x, i: shifted_jpeg(
                x, params["quality2"][i], subset, params["shift_y"][i], params["shift_x"][i], codec
            ),
        )
    if unclipped:
        out = torch.where(params["unclipped"][:, None, None, None], awgn, out)
    if untouched:  # samples with neither noise nor JPEG are returned exactly as given
        out = torch.where(((params["sigma_255"] == 0) & (params["quality"] == 0))[:, None, None, None], clean, out)
    return out


def _on_subset(batch: torch.Tensor, members: list[int], fn) -> torch.Tensor:
    """`fn(batch[members], index)` written back into a copy of `batch`; the whole batch needs no gather."""
    if len(members) == batch.shape[0]:
        return fn(batch, slice(None))
    index = host_index(members, batch.device)
    return batch.index_copy(0, index, fn(batch[index], index))


def shifted_jpeg(
    image: torch.Tensor,
    quality: torch.Tensor,
    subsampling: Sequence[int],
    shift_y: torch.Tensor,
    shift_x: torch.Tensor,
    codec: str = "auto",
) -> torch.Tensor:
    """JPEG of each sample of `image` with the block grid moved by (shift_y, shift_x), as a second save after a
    crop; `subsampling` holds host codes, as `jpeg` takes them.

    Each sample is embedded in a canvas 8 px larger at its (shift_y, shift_x) offset, the canvas edge-replicated
    around it, compressed, and cut back out; one gather per axis, no loop over samples.
    """
    n, c, h, w = image.shape
    rows = (torch.arange(h + 8, device=image.device)[None] - shift_y[:, None]).clamp(0, h - 1)  # (N, H+8)
    cols = (torch.arange(w + 8, device=image.device)[None] - shift_x[:, None]).clamp(0, w - 1)
    canvas = image.gather(2, rows[:, None, :, None].expand(n, c, h + 8, w)).gather(
        3, cols[:, None, None, :].expand(n, c, h + 8, w + 8)
    )
    coded = jpeg(canvas, quality, subsampling, codec)
    rows_back = (torch.arange(h, device=image.device)[None] + shift_y[:, None])[:, None, :, None]
    cols_back = (torch.arange(w, device=image.device)[None] + shift_x[:, None])[:, None, None, :]
    return coded.gather(2, rows_back.expand(n, c, h, w + 8)).gather(3, cols_back.expand(n, c, h, w))
