"""The shapes the release results take as they cross modules: `release.evaluate` writes a `ReleaseSummary` (the
committed docs/results/results.json), `release.report` renders it, tests/test_release.py re-measures its check rows.
TypedDicts over plain JSON, so a mistyped key fails in the type checker and the file stays what it is."""

from __future__ import annotations

from typing import Any, TypedDict

from evaluate.results import CellSummary, EvalResult


class CachedRun(EvalResult, total=False):
    """An `evaluate` run as `release.evaluate` caches it under `--out`: the result without its samples, plus what
    the cache is keyed on."""

    model_sha256: str
    names: list[str]  # the images, in order
    images: list[str]  # a BM3D run: its images (the cache key of `release.evaluate.bm3d_run`)
    versions: dict[str, str]


class Bm3dCell(TypedDict):
    sigma: float
    quality: int | None
    psnr_input: float
    psnr_bm3d: float
    psnr_model: float  # the model on the same images


class Bm3dSummary(TypedDict):
    images: list[str]
    cells: list[Bm3dCell]


class Failure(TypedDict):
    least_gain_cells: list[dict[str, Any]]
    tile_classes: list[dict[str, Any]]


class CheckRow(TypedDict, total=False):
    """One image in one cell: the figure tests/test_release.py measures again."""

    set: str
    protocol: str
    sigma: float
    quality: int | None
    index: int
    name: str
    psnr_model: float
    psnr_told: float  # a conditioned model told the truth (anchor protocol)


class ReleaseSummary(TypedDict):
    """docs/results/results.json."""

    model: str
    model_sha256: str
    parameters: int
    macs_per_megapixel: float
    command: str
    anchor: dict[str, list[CellSummary]]  # set -> cells
    real: dict[str, list[CellSummary]]
    bm3d: dict[str, Bm3dSummary]
    failure: dict[str, Failure]
    crops: list[dict[str, Any]]  # Kodak24 crops and, for a conditioned model, the strength figure
    check: list[CheckRow]
    versions: dict[str, str]
