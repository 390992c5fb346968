"""The shapes of evaluation results as they cross modules: `evaluate.harness.evaluate` produces an `EvalResult`;
the report, failure report, plots and `release.evaluate` read it. TypedDicts, so a mistyped key fails in the type
checker, and the values stay the plain JSON that results files hold.

Per-method metrics are keyed `psnr_<method>` / `ssim_<method>` (methods: `input`, `model`, `told` for a conditioned
model told the truth, a baseline's name); the ones this project produces are declared here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class CellSummary(TypedDict, total=False):
    """One sigma x quality cell, means over its images (per-image PSNR averaged, as papers report)."""

    sigma: float
    quality: int | None
    images: int
    psnr_input: float
    psnr_model: float
    psnr_gain: float  # model - input
    ssim_input: float
    ssim_model: float
    ssim_gain: float
    psnr_told: float  # a conditioned model told the cell's true sigma and quality (`told=True`)
    ssim_told: float
    psnr_bm3d: float  # the BM3D baseline (`baseline="bm3d"`)
    ssim_bm3d: float
    seconds: float
    img_per_s: float


class EvalResult(TypedDict, total=False):
    """`evaluate.harness.evaluate`'s result: the run's settings, the cells, the failure analysis, the samples."""

    protocol: str  # "real" or "anchor" (evaluate.protocols)
    metric: dict[str, str]  # psnr / ssim -> how measured (RGB or Y, crop)
    methods: list[str]
    baseline: str | None
    ensemble: bool  # the model ran as the x8 flip/rotate self-ensemble
    told: str | None  # what the "told" method was told: both, sigma or quality (None: it did not run)
    device: str
    parameters: int | None
    cells: list[CellSummary]
    messages: list[str]
    seconds: float
    per_image: list[dict[str, Any]]
    tile_classes: list[dict[str, Any]]
    worst_images: list[dict[str, Any]]
    worst_tiles: list[dict[str, Any]]
    least_gain_cells: list[dict[str, Any]]
    samples: dict[str, Any]  # (3, h, w) CPU tensors for the report writers; not written to JSON
    # added by `python -m evaluate` (evaluate.cli) before it writes results.json
    model: str
    data: str
    images: list[str]
    versions: dict[str, str]
    skipped_images: list[str]


def figure(row: Mapping[str, Any], key: str) -> float:
    """A per-method figure of a cell or per-image row, `key` built at run time (`psnr_<method>`, `ssim_<method>`,
    `<metric>_gain`): the one place a computed key is read, so the declared keys stay checked everywhere else."""
    return float(row[key])
