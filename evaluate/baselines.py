"""Restorers the harness can run: a trained model (blind, or told the true degradation), the identity (restored =
degraded) and BM3D.

A restorer maps a degraded `(1, 3, H, W)` float32 tensor on the evaluation device (values in [0, 1], or unbounded
under the anchor protocol) and the true cell (sigma on the 0-255 scale, JPEG quality or None) to the restored
`(1, 3, H, W)` tensor on the same device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from model.condition import encode_condition

if TYPE_CHECKING:
    from evaluate.protocols import Cell

Restorer = Callable[[torch.Tensor, "Cell"], torch.Tensor]

BASELINES = ("bm3d",)
TOLD = ("both", "sigma", "quality")  # what a conditioned model is told of the true cell


def identity_restorer(degraded: torch.Tensor, cell: Cell) -> torch.Tensor:
    """No restoration: the degraded input itself (the harness's 'identity' model and the input baseline)."""
    return degraded


def model_restorer(model: nn.Module, told: bool | str = False) -> Restorer:
    """Wrap a restoration model (eval mode, (N, 3, H, W) in and out) as a restorer: blind, or for a conditioned
    model `told` the cell's true sigma and quality (True or "both"; the strength control, as CBM3D and FFDNet are
    told sigma), or only one of them ("sigma", "quality"), the other withheld."""
    tell = "both" if told is True else told or ""
    if tell and tell not in TOLD:
        raise ValueError(f"told must be one of {', '.join(TOLD)}, got {told!r}")

    def restore(degraded: torch.Tensor, cell: Cell) -> torch.Tensor:
        condition = None
        if tell:
            sigma = cell.sigma_255 if tell != "quality" else None
            quality = (cell.quality or 0) if tell != "sigma" else None
            condition = encode_condition(1, sigma, quality, degraded.device)
        was_training = model.training  # a trainer's model goes back to its mode afterwards
        model.eval()
        try:
            with torch.inference_mode():
                return (model(degraded, condition) if tell else model(degraded)).float()
        finally:
            model.train(was_training)

    return restore


def bm3d_restorer() -> Restorer:
    """CBM3D (`bm3d.bm3d_rgb`, opponent colour space) told the true Gaussian sigma; runs on the CPU in numpy.

    It knows nothing of JPEG: in cells with a quality it is told only the Gaussian sigma. Sigma 0 returns the input.
    """
    try:
        import bm3d
    except ImportError as err:
        raise ImportError("the bm3d baseline needs the bm3d package: pip install bm3d (or the 'bench' extra)") from err

    def restore(degraded: torch.Tensor, cell: Cell) -> torch.Tensor:
        if cell.sigma_255 <= 0:
            return degraded
        noisy = degraded[0].permute(1, 2, 0).double().cpu().numpy()  # (H, W, 3) float, bm3d's layout
        denoised = np.asarray(bm3d.bm3d_rgb(noisy, cell.sigma_255 / 255.0), dtype=np.float32)
        return torch.from_numpy(denoised).permute(2, 0, 1)[None].to(degraded.device)

    return restore


def make_baseline(name: str) -> Restorer:
    """A named baseline restorer ('bm3d')."""
    if name == "bm3d":
        return bm3d_restorer()
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
