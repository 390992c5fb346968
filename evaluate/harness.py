"""The evaluation loop: clean images x (sigma, quality) cells -> metrics of the input, the model and baselines.

`evaluate(...)` is the Python API (the trainer and tests call it); it writes no files. Each image runs alone (sizes
differ), without grad, on the chosen device. The restored output is clipped to [0, 1] and rounded to 8 bits before
it is measured, as the published test scripts do (KAIR `util.tensor2uint`); the degraded input is measured the same
way (under `real` it already is 8-bit; under `anchor` the model still receives the unclipped float input).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from evaluate.analysis import quantise, tile_classes, tile_psnr, tile_size_for
from evaluate.baselines import Restorer, identity_restorer, make_baseline, model_restorer
from evaluate.collect import Collector
from evaluate.metrics import metric_label, psnr, ssim
from evaluate.protocols import Cell, degrade, make_cells
from evaluate.results import CellSummary, EvalResult
from model import is_conditioned
from model.testtime import SelfEnsemble
from pipeline.device import resolve_device
from pipeline.io import to_tensor
from pipeline.progress import progress as make_bar

DEFAULT_SIGMAS = (5.0, 15.0, 25.0, 50.0)
DEFAULT_QUALITIES = (10, 30, 50, 90, None)
METHODS_BASE = ("input", "model")


def _measure(view: torch.Tensor, clean: torch.Tensor, y_channel: bool, crop_border: int) -> tuple[float, float]:
    """(PSNR, SSIM) of one (1, 3, H, W) image against its clean version, with the run's conventions."""
    psnr_db = psnr(view, clean, y_channel=y_channel, crop_border=crop_border)
    return float(psnr_db[0]), float(ssim(view, clean, y_channel=y_channel, crop_border=crop_border)[0])


def _run_image(
    clean8: np.ndarray, index: int, cell: Cell, restorers: dict[str, Restorer], setup: dict
) -> tuple[dict, dict]:
    """Degrade, restore and measure one image in one cell -> (per-image row, views and tile data for the collector)."""
    device = setup["device"]
    clean = to_tensor(clean8)[None].to(device)  # (1, 3, H, W)
    degraded = degrade(clean8, cell, index, setup["protocol"])[None].to(device)
    views = {"input": quantise(degraded)}
    for method, restore in restorers.items():
        views[method] = quantise(restore(degraded, cell))
    row: dict = {"cell": cell.name, "sigma": cell.sigma_255, "quality": cell.quality, "index": index}
    for method, view in views.items():
        row[f"psnr_{method}"], row[f"ssim_{method}"] = _measure(view, clean, setup["y_channel"], setup["crop_border"])
    row["psnr_gain"] = row["psnr_model"] - row["psnr_input"]
    row["ssim_gain"] = row["ssim_model"] - row["ssim_input"]
    height, width = clean8.shape[:2]
    tile = tile_size_for(height, width, setup["tile"])
    if index not in setup["classes"]:  # the clean image is the same in every cell: label its tiles once
        setup["classes"][index] = tile_classes(clean, tile)
    tiles = {
        "size": tile,
        "input": tile_psnr(views["input"], clean, tile),
        "model": tile_psnr(views["model"], clean, tile),
        "classes": setup["classes"][index],
    }
    return row, {"clean": clean, "degraded": degraded, "views": views, "tiles": tiles}


def _summarise(cell: Cell, rows: list[dict], methods: Sequence[str], seconds: float) -> CellSummary:
    """Mean metrics of one cell over its images (per-image PSNR averaged, as the papers report)."""
    summary = CellSummary(sigma=cell.sigma_255, quality=cell.quality, images=len(rows))
    for metric in ("psnr", "ssim"):
        for method in methods:
            summary[f"{metric}_{method}"] = float(np.mean([r[f"{metric}_{method}"] for r in rows]))  # type: ignore[literal-required]
        summary[f"{metric}_gain"] = summary[f"{metric}_model"] - summary[f"{metric}_input"]  # type: ignore[literal-required]
    summary["seconds"] = seconds
    summary["img_per_s"] = len(rows) / seconds if seconds > 0 else math.inf
    return summary


def _restorers(
    model: nn.Module | None, baseline: str | None, device: torch.device, told: bool | str, ensemble: bool
) -> dict[str, Restorer]:
    """The methods to run besides the input: 'model' (or the identity when model is None), 'told' (the model told
    the true sigma and quality, or one of them: `model_restorer`; conditioned models only) and the baseline; with
    `ensemble` the model's methods average it over the 8 flips and quarter turns of the input
    (`model.testtime.SelfEnsemble`)."""
    if ensemble and model is None:
        raise ValueError("ensemble=True needs a model: the identity has nothing to average")
    net = None if model is None else (SelfEnsemble(model) if ensemble else model).to(device)
    restorers = {"model": identity_restorer if net is None else model_restorer(net)}
    if told:
        if net is None or model is None or not is_conditioned(model):
            raise ValueError("told=True needs a conditioned model (one built with conditioned=True)")
        restorers["told"] = model_restorer(net, told=told)
    if baseline:
        restorers[baseline] = make_baseline(baseline)
    return restorers


def _header(
    model: nn.Module | None,
    protocol: str,
    device: torch.device,
    y_channel: bool,
    crop_border: int,
    baseline: str | None,
    methods: Sequence[str],
    ensemble: bool,
) -> dict:
    """The run's settings as result fields."""
    return {
        "protocol": protocol,
        "metric": {
            "psnr": metric_label("psnr", y_channel=y_channel, crop_border=crop_border),
            "ssim": metric_label("ssim", y_channel=y_channel, crop_border=crop_border),
        },
        "methods": list(methods),
        "baseline": baseline,
        "ensemble": ensemble,
        "device": str(device),
        "parameters": None if model is None else sum(p.numel() for p in model.parameters()),
    }


def evaluate(
    model: nn.Module | None,
    images: Sequence[np.ndarray],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    qualities: Sequence[int | None] = DEFAULT_QUALITIES,
    protocol: str = "real",
    device: str | torch.device = "cpu",
    *,
    names: Sequence[str] | None = None,
    y_channel: bool = False,
    crop_border: int = 0,
    baseline: str | None = None,
    told: bool | str = False,
    ensemble: bool = False,
    tile: int = 64,
    crops_per_cell: int = 2,
    worst: int = 6,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `model` (None = identity) on clean (H, W, 3) uint8 `images` over every sigma x quality cell; `told`
    also runs a conditioned model told each cell's truth ("told"; "sigma" or "quality": that alone), `ensemble` runs
    the x8 flip/rotate self-ensemble.
    Returns a JSON-ready dict (`protocol`, `metric`, `cells`, `per_image`, `tile_classes`, `worst_*`, `messages`,
    ...) plus `samples`: comparison crops and failure crops as (3, h, w) CPU tensors, for the report writers."""
    device = resolve_device(device) if isinstance(device, str) else device
    names = list(names) if names is not None else [f"image{i:03d}" for i in range(len(images))]
    cells, messages = make_cells(list(sigmas), list(qualities), protocol)
    restorers = _restorers(model, baseline, device, told, ensemble)
    methods = ("input", *restorers)
    setup = {"device": device, "protocol": protocol, "y_channel": y_channel, "crop_border": crop_border, "tile": tile}
    setup["classes"] = {}
    collector = Collector(crops_per_cell=crops_per_cell, worst=worst)
    cell_summaries, start = [], time.perf_counter()
    for cell in cells:
        rows, cell_start = [], time.perf_counter()
        bar = make_bar(len(images), f"{cell.name:>10}", unit="img", disable=not progress, leave=True)
        for index, clean8 in enumerate(images):
            row, data = _run_image(clean8, index, cell, restorers, setup)
            row["name"] = names[index]
            collector.add(cell, row, data)
            rows.append(row)
            bar.set_postfix(psnr_in=f"{row['psnr_input']:.2f}", psnr_out=f"{row['psnr_model']:.2f}")
            bar.update(1)
        bar.close()
        cell_summaries.append(_summarise(cell, rows, methods, time.perf_counter() - cell_start))
    result = EvalResult(**_header(model, protocol, device, y_channel, crop_border, baseline, methods, ensemble))
    result["cells"], result["messages"] = cell_summaries, messages
    result["told"] = ("both" if told is True else told) or None
    result["seconds"] = time.perf_counter() - start
    result.update(collector.finish(cell_summaries))
    return result
