"""Test protocols: how a clean uint8 image becomes the degraded input of one (sigma, quality) cell.

- `real`: the real-world degradation of `pipeline.reference.degrade_reference`: float Gaussian noise, clip, round to
  8 bits, one Pillow/libjpeg JPEG at `quality` with 4:2:0 chroma subsampling (quality None = no JPEG). The noise comes
  from `np.random.default_rng([REAL_SEED, round(100 * sigma_255), quality or 0, image_index])`: fixed per cell and
  image, independent of the order in which cells run and of `--limit`.
- `anchor`: the protocol of the published DnCNN / FFDNet / DRUNet tables (cszn/KAIR `main_test_dncnn.py`, cszn/DPIR
  `main_dpir_denoising.py`): the clean image as float32 in [0, 1] (`uint2single`), `np.random.seed(0)` again before
  every image, `+= np.random.normal(0, sigma / 255, img.shape)` on the (H, W, 3) array; neither clipped nor
  quantised, no JPEG. The model receives that unclipped float input. A `RandomState(0)` draws the same numbers as
  `np.random.seed(0)` without touching numpy's global state.

Both return the degraded image as a (3, H, W) float32 tensor: [0, 1] for `real`, unbounded for `anchor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.io import to_tensor
from pipeline.reference import degrade_reference

PROTOCOLS = ("real", "anchor")
REAL_SEED = 20_240_611  # base entropy of the `real` protocol's noise; change it and every number moves
ANCHOR_SEED = 0  # the published scripts' np.random.seed(0)


@dataclass(frozen=True)
class Cell:
    """One test condition: Gaussian sigma on the 0-255 scale and JPEG quality (None = no JPEG)."""

    sigma_255: float
    quality: int | None

    @property
    def name(self) -> str:
        sigma = f"{self.sigma_255:g}"
        return f"s{sigma}_q{self.quality}" if self.quality is not None else f"s{sigma}_qnone"


def parse_sigmas(text: str) -> list[float]:
    """'5,15,25,50' -> [5.0, 15.0, 25.0, 50.0]; each sigma must be >= 0 (0-255 scale)."""
    sigmas = [float(part) for part in text.split(",") if part.strip()]
    if not sigmas or any(s < 0 for s in sigmas):
        raise ValueError(f"sigmas must be a comma list of numbers >= 0, got {text!r}")
    return sigmas


def parse_qualities(text: str) -> list[int | None]:
    """'10,30,none' -> [10, 30, None]; qualities are JPEG qualities 1-100, `none` means no JPEG."""
    qualities: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        quality = None if part == "none" else int(part)
        if quality is not None and not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100 or 'none', got {part!r}")
        qualities.append(quality)
    if not qualities:
        raise ValueError(f"no qualities in {text!r}")
    return qualities


def make_cells(sigmas: list[float], qualities: list[int | None], protocol: str) -> tuple[list[Cell], list[str]]:
    """Cells sigma x quality in that order; under `anchor` cells with a JPEG quality are dropped with a message."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    cells, messages = [], []
    for sigma in sigmas:
        for quality in qualities:
            if protocol == "anchor" and quality is not None:
                messages.append(f"anchor protocol has no JPEG: cell sigma={sigma:g} quality={quality} ignored")
                continue
            cells.append(Cell(sigma, quality))
    if not cells:
        raise ValueError("no valid cells (the anchor protocol needs quality 'none')")
    return cells, messages


def real_rng(cell: Cell, image_index: int) -> np.random.Generator:
    """The `real` protocol's noise generator for one cell and image (see the module docstring)."""
    return np.random.default_rng([REAL_SEED, round(100 * cell.sigma_255), cell.quality or 0, image_index])


def degrade_real(clean8: np.ndarray, cell: Cell, image_index: int) -> torch.Tensor:
    """(H, W, 3) uint8 clean -> (3, H, W) float32 degraded in [0, 1] by real noise + libjpeg (4:2:0)."""
    params = {"sigma_255": cell.sigma_255, "quality": cell.quality or 0, "subsampling": 2, "quality2": 0}
    degraded8 = degrade_reference(clean8, params, real_rng(cell, image_index))
    return to_tensor(np.array(degraded8))  # writable copy: libjpeg output arrays are read-only


def degrade_anchor(clean8: np.ndarray, cell: Cell) -> torch.Tensor:
    """(H, W, 3) uint8 clean -> (3, H, W) float32 noisy, unclipped: KAIR's `np.random.seed(0)` per image recipe."""
    if cell.quality is not None:
        raise ValueError("the anchor protocol has no JPEG step")
    noisy = (clean8 / 255.0).astype(np.float32)  # KAIR util.uint2single
    noisy += np.random.RandomState(ANCHOR_SEED).normal(0, cell.sigma_255 / 255.0, noisy.shape)
    return torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1)))


def degrade(clean8: np.ndarray, cell: Cell, image_index: int, protocol: str) -> torch.Tensor:
    """Degraded (3, H, W) float32 input of `clean8` for `cell` under `protocol` ('real' or 'anchor')."""
    if protocol == "real":
        return degrade_real(clean8, cell, image_index)
    if protocol == "anchor":
        return degrade_anchor(clean8, cell)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
