"""Accumulates what the reports need while the harness runs, without keeping every image in memory.

Kept: every per-image row; a few comparison crops per cell; the `worst` images by PSNR gain (a crop centred on their
worst tile); the `worst` tiles of each content class (flat / edge / texture) over the whole run; the mean tile gain
per cell and content class. Gains are model
PSNR minus input PSNR; non-finite gains (identical tiles give inf - inf) are left out of the rankings.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import torch

from evaluate.analysis import TILE_CLASSES, crop_box, tile_origin, triplet
from evaluate.protocols import Cell
from evaluate.results import CellSummary, EvalResult


@dataclass
class Collector:
    """Collects per-image rows, crops and tile statistics; `finish` turns them into report-ready fields."""

    crops_per_cell: int = 2
    worst: int = 6
    crop_size: int = 128
    per_image: list[dict] = field(default_factory=list)
    comparisons: list[tuple[dict, torch.Tensor]] = field(default_factory=list)
    _worst_images: list = field(default_factory=list)  # max-heap on gain via (-gain, tiebreak, record, crop)
    _worst_tiles: dict[str, list] = field(default_factory=lambda: {label: [] for label in TILE_CLASSES})
    _class_gains: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _tiebreak: itertools.count = field(default_factory=itertools.count)

    def add(self, cell: Cell, row: dict, data: dict) -> None:
        """Take one image's row and its views/tiles (as `harness._run_image` returns them)."""
        self.per_image.append(row)
        tiles = data["tiles"]
        gains = (tiles["model"] - tiles["input"]).cpu().tolist()
        finite = [(gain, i) for i, gain in enumerate(gains) if math.isfinite(gain)]
        for gain, i in finite:
            self._class_gains.setdefault((cell.name, tiles["classes"][i]), []).append(gain)
        height, width = data["clean"].shape[-2:]
        if row["index"] < self.crops_per_cell:
            box = crop_box(height, width, height // 2, width // 2, self.crop_size)
            name = f"{cell.name}_{row['index']:03d}_{row['name']}"
            record = {"cell": cell.name, "name": row["name"], "file": f"crops/{name}.png"}
            record.update(psnr_input=row["psnr_input"], psnr_model=row["psnr_model"])
            self.comparisons.append((record, self._crop(data, box)))
        if math.isfinite(row["psnr_gain"]):
            center = (height // 2, width // 2)
            if finite:  # centre the crop on the image's worst tile
                top, left = tile_origin(min(finite)[1], width, tiles["size"])
                center = (top + tiles["size"] // 2, left + tiles["size"] // 2)
            box = crop_box(height, width, *center, self.crop_size)
            self._offer(self._worst_images, row["psnr_gain"], lambda: (dict(row), self._crop(data, box)))
        for gain, i in finite:
            heap = self._worst_tiles[tiles["classes"][i]]
            self._offer(heap, gain, lambda i=i, gain=gain: self._tile_record(cell, row, data, i, gain))

    @staticmethod
    def _crop(data: dict, box: tuple[int, int, int]) -> torch.Tensor:
        return triplet(data["degraded"], data["views"]["model"], data["clean"], box)

    def _tile_record(self, cell: Cell, row: dict, data: dict, index: int, gain: float) -> tuple[dict, torch.Tensor]:
        tiles, size = data["tiles"], data["tiles"]["size"]
        top, left = tile_origin(index, data["clean"].shape[-1], size)
        record = {"cell": cell.name, "name": row["name"], "index": row["index"], "top": top, "left": left}
        record.update(size=size, content=tiles["classes"][index], psnr_gain=gain)
        record.update(psnr_input=float(tiles["input"][index]), psnr_model=float(tiles["model"][index]))
        return record, self._crop(data, (top, left, size))

    def _offer(self, heap: list, gain: float, make) -> None:
        """Keep the `worst` lowest gains; `make()` builds (record, crop) only when the entry gets in."""
        if len(heap) >= self.worst and gain >= -heap[0][0]:
            return
        record, crop = make()
        heapq.heappush(heap, (-gain, next(self._tiebreak), record, crop))
        if len(heap) > self.worst:
            heapq.heappop(heap)

    @staticmethod
    def _ranked(heap: list, prefix: str) -> list[tuple[dict, torch.Tensor]]:
        entries = sorted(heap, key=lambda e: (-e[0], e[1]))
        ranked = []
        for rank, (_, _, record, crop) in enumerate(entries, start=1):
            ranked.append(({"rank": rank, **record, "file": f"failure/{prefix}_{rank:02d}.png"}, crop))
        return ranked

    def finish(self, cells: list[CellSummary]) -> EvalResult:
        """Report fields: per_image, tile_classes, worst_images, worst_tiles (by class), least_gain_cells, samples."""
        worst_images = self._ranked(self._worst_images, "worst_image")
        worst_tiles = [e for label, heap in self._worst_tiles.items() for e in self._ranked(heap, f"worst_{label}")]
        order = {Cell(c["sigma"], c["quality"]).name: i for i, c in enumerate(cells)}
        tile_stats = []
        keyed = sorted(self._class_gains.items(), key=lambda kv: (order[kv[0][0]], TILE_CLASSES.index(kv[0][1])))
        for (cell_name, label), gains in keyed:
            mean_gain = sum(gains) / len(gains)
            tile_stats.append({"cell": cell_name, "content": label, "tiles": len(gains), "psnr_gain": mean_gain})
        least = sorted((c for c in cells if math.isfinite(c["psnr_gain"])), key=lambda c: c["psnr_gain"])[:3]
        return {
            "per_image": self.per_image,
            "tile_classes": tile_stats,
            "worst_images": [r for r, _ in worst_images],
            "worst_tiles": [r for r, _ in worst_tiles],
            "least_gain_cells": [{k: c[k] for k in ("sigma", "quality", "psnr_gain", "ssim_gain")} for c in least],
            "samples": {"comparisons": self.comparisons, "worst_images": worst_images, "worst_tiles": worst_tiles},
        }
