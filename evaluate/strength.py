"""The strength control, shown: one degraded crop restored blind and told a range of sigmas, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from evaluate.metrics import psnr
from evaluate.protocols import Cell, degrade_real
from model.condition import encode_condition
from pipeline.io import save_png, to_rgb8_array, to_tensor

LABEL_HEIGHT = 14


def _labelled(panels: list[tuple[str, torch.Tensor]]) -> np.ndarray:
    """(3, h, w) panels side by side, 4 px apart, each under a label strip."""
    arrays = [to_rgb8_array(panel) for _, panel in panels]
    height, width = arrays[0].shape[:2]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = np.concatenate([x for a in arrays for x in (a, gap)][:-1], axis=1)
    strip = Image.new("RGB", (row.shape[1], LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (label, _) in enumerate(panels):
        draw.text((i * (width + 4) + 2, 1), label, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), row], axis=0)


@torch.inference_mode()
def strength_figure(
    model: nn.Module, clean8: np.ndarray, cell: Cell, told_sigmas: list[float], path: Path, crop: int = 160
) -> list[dict]:
    """Degrade `clean8` for `cell` (real protocol), restore it blind and told each sigma in `told_sigmas` (and the
    true quality), save degraded | blind | told ... | clean crops to `path`; returns each PSNR (whole image)."""
    clean = to_tensor(clean8)[None]
    degraded = degrade_real(clean8, cell, 0)[None]
    variants = [("blind", None)] + [(f"told sigma {s:g}", s) for s in told_sigmas]
    top, left = (clean.shape[2] - crop) // 2, (clean.shape[3] - crop) // 2
    view = (slice(None), slice(None), slice(top, top + crop), slice(left, left + crop))
    panels = [(f"input s{cell.sigma_255:g} q{cell.quality}", degraded[view][0])]
    rows = []
    for label, sigma in variants:
        condition = None if sigma is None else encode_condition(1, sigma, cell.quality or 0)
        restored = model(degraded, condition).float().clamp(0, 1)
        value = float(psnr((restored * 255).round() / 255, clean)[0])
        rows.append({"variant": label, "sigma_told": sigma, "psnr": value})
        panels.append((f"{label}: {value:.2f}", restored[view][0]))
    panels.append(("clean", clean[view][0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(_labelled(panels), path)
    return rows
