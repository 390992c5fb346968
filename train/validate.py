"""Validation on the real-libjpeg validation sets: PSNR/SSIM overall and per degradation bucket, and a sample grid,
for the shards' val split and for each folder set (`val.sets`), reported one by one."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict, cast

import numpy as np
import torch
from PIL import Image

from evaluate.metrics import psnr, ssim
from model import is_conditioned
from model.condition import condition_from_params
from pipeline.io import to_rgb8_array
from pipeline.valset import ValSet
from train.config import ValConfig

SIGMA_BINS_255 = ((0.0, 0.0, "0"), (0.0, 15.0, "0-15"), (15.0, 30.0, "15-30"), (30.0, 1e9, "30+"))
PSNR_CAP_DB = 100.0  # identical images (infinite PSNR) count as 100 dB
QUALITY_BINS = ((0, 0, "none"), (1, 30, "1-30"), (31, 60, "31-60"), (61, 100, "61-100"))


def _bucket_names(params: dict[str, torch.Tensor]) -> list[str]:
    names = []
    for sigma, quality in zip(params["sigma_255"].tolist(), params["quality"].tolist(), strict=True):
        s = next(n for lo, hi, n in SIGMA_BINS_255 if (sigma == 0 if hi == 0 else lo < sigma <= hi))
        q = next(n for lo, hi, n in QUALITY_BINS if lo <= quality <= hi)
        names.append(f"sigma {s} / q {q}")
    return names


class ValResult(TypedDict, total=False):
    """One validation set: means over the degraded samples (dB, SSIM), per-bucket means, the sample grid's path."""

    psnr_input: float
    psnr_model: float
    ssim_input: float
    ssim_model: float
    psnr_conditioned: float  # conditioned models: told the true sigma and quality
    buckets: dict[str, dict[str, float]]
    grid: str


class ValSetsResult(ValResult, total=False):
    """`validate_sets`: the first set's figures at the top level, each set's under `sets`, `psnr_select` for best.pt."""

    psnr_select: float
    sets: dict[str, ValResult]


def validate_sets(
    model: torch.nn.Module,
    valsets: dict[str, ValSet],
    cfg: ValConfig,
    device: torch.device,
    samples_dir: Path,
    step: int,
) -> ValSetsResult:
    """The first set's result (the shards' val split) at the top level, every set's under `sets`, and `psnr_select`:
    the mean model PSNR over the sets, each weighted alike, which picks best.pt."""
    results = {}
    for index, (name, valset) in enumerate(valsets.items()):
        results[name] = validate(model, valset, cfg, device, samples_dir, step, "" if index == 0 else f"_{name}")
    first = next(iter(results.values()))
    select = sum(r["psnr_model"] for r in results.values()) / len(results)
    return ValSetsResult(**first, psnr_select=round(select, 4), sets=results)


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    valset: ValSet,
    cfg: ValConfig,
    device: torch.device,
    samples_dir: Path,
    step: int,
    suffix: str = "",
) -> ValResult:
    """Mean PSNR/SSIM of the input and of the model per (sigma bin, quality bin), and overall on the samples that
    were degraded (the untouched ones, sigma 0 and no JPEG, are reported in their own bucket); writes a grid PNG.
    A conditioned model is also run told the true sigma and quality (`psnr_conditioned`): what the condition adds."""
    was_training = model.training
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {"psnr_input": [], "psnr_model": [], "ssim_input": [], "ssim_model": []}
    grid: list[np.ndarray] = []
    conditioned = is_conditioned(model)
    if conditioned:
        rows["psnr_conditioned"] = []
    for clean, degraded, params in valset.batches(cfg.batch_size, device):
        restored = model(degraded).float().clamp(0, 1)
        if conditioned:
            condition = condition_from_params({k: v.to(device) for k, v in params.items()}, None, p_withheld=0.0)
            rows["psnr_conditioned"].append(psnr(model(degraded, condition).float().clamp(0, 1), clean).cpu())
        rows["psnr_input"].append(psnr(degraded, clean).cpu())
        rows["psnr_model"].append(psnr(restored, clean).cpu())
        rows["ssim_input"].append(ssim(degraded, clean).cpu())
        rows["ssim_model"].append(ssim(restored, clean).cpu())
        for i in range(min(len(clean), cfg.samples - len(grid))):
            grid.append(np.concatenate([to_rgb8_array(t[i]) for t in (degraded, restored, clean)], axis=1))
    model.train(was_training)
    values = {k: torch.cat(v) for k, v in rows.items()}
    for key in [k for k in values if k.startswith("psnr")]:
        values[key] = values[key].clamp(max=PSNR_CAP_DB)
    untouched = (valset.params["sigma_255"] == 0) & (valset.params["quality"] == 0)  # reported in their own bucket
    overall = ~untouched if bool((~untouched).any()) else torch.ones_like(untouched)
    result = cast(ValResult, {k: round(float(v[overall].mean()), 4) for k, v in values.items()})
    buckets: dict[str, dict] = {}
    names = _bucket_names(valset.params)
    for name in sorted(set(names)):
        mask = torch.tensor([n == name for n in names])
        buckets[name] = {k: round(float(v[mask].mean()), 4) for k, v in values.items()} | {"n": int(mask.sum())}
    result["buckets"] = buckets
    if grid:
        samples_dir.mkdir(parents=True, exist_ok=True)
        path = samples_dir / f"step_{step:07d}{suffix}.png"
        Image.fromarray(np.concatenate(grid, axis=0)).save(path)
        result["grid"] = str(path)
    return result
