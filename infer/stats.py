"""How tiles get whole-image pooling statistics: the `--stats` mini-language, parsed into a `StatsPlan`.

"local" (each tile pools alone), "passes:N" (N statistics passes before the final one, each using the means of the
pass before), "sample:S" (those passes run every S-th row and column of a grid of small tiles), "downscale:F"
(start from the means of the image downscaled F times, run whole); parts join with "+". docs/infer.md measures them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.pooling import PoolRequest

DEFAULT_STATS = "sample:4+passes:3"  # what "auto" means


@dataclass(frozen=True)
class StatsPlan:
    """A parsed `--stats`: which estimates run before the final pass over the tiles."""

    downscale: int  # estimate from the image downscaled by this factor first (0: no)
    passes: int  # then this many statistics passes over the sampled tiles
    sample: int = 1  # the statistics passes run a lattice of small tiles this many apart (1: all the tiles)


def in_lattice(row: int, column: int, spacing: int) -> bool:
    """Whether tile (row, column) is in a lattice of every `spacing`-th row and column, each such row shifted by half
    a spacing from the one before (so the samples spread like a quincunx)."""
    return row % spacing == 0 and (column + (row // spacing) * (spacing // 2)) % spacing == 0


def backend_pools(backend: object) -> bool:
    """Whether `backend` takes and returns pooled statistics (`infer.backend_base.Backend.pool_channels`)."""
    return bool(getattr(backend, "pool_channels", 0))


def stats_plan(backend: object, stats: str) -> StatsPlan:
    """Parse `stats` ("auto" = `DEFAULT_STATS`; module docstring) for `backend`: a backend without pooled I/O
    always pools locally, and a graph of one input size cannot run the downscaled estimate."""
    stats = DEFAULT_STATS if stats == "auto" else stats
    if not backend_pools(backend):
        return StatsPlan(0, 0)
    found = {"downscale": 0, "passes": 0, "sample": 1}
    for part in stats.split("+"):
        kind, _, value = part.partition(":")
        if kind == "local" and not value:
            continue
        if kind not in found or not value.isdigit():
            raise ValueError(
                f"unknown pooling statistics {stats!r}: use local, passes:N, sample:K, downscale:F "
                "(or several joined by +)"
            )
        found[kind] = int(value)
    if found["sample"] > 1 and "passes" not in stats:
        found["passes"] = 1
    if found["downscale"] and getattr(backend, "fixed_hw", None):  # a graph of one input size cannot run it
        found["downscale"], found["passes"] = 0, max(found["passes"], 1)
    return StatsPlan(**found)


def downscaled_means(
    backend: Callable, image: torch.Tensor, factor: int, condition: torch.Tensor | None
) -> torch.Tensor:
    """Whole-image pooled means of the image downscaled by `factor` (area average), run whole: `(P,)`."""
    small_hw = (max(1, image.shape[-2] // factor), max(1, image.shape[-1] // factor))
    small = torch.nn.functional.interpolate(image, size=small_hw, mode="area")
    request = PoolRequest.whole()
    backend(small, condition, pooling=request)
    stride = backend.stride
    pixels = -(-small_hw[0] // stride) * stride * (-(-small_hw[1] // stride) * stride)
    return request.sums.cpu() / pixels
