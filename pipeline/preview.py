"""A picture of the degradation: `python -m pipeline.preview --shards DIR --out FILE.png`.

Rows: training images at increasing noise sigma; columns: JPEG qualities (and none). Each cell shows the device
pipeline's output (left) beside real libjpeg (Pillow) applied to the same noisy 8-bit image (right), with the
PSNR between the two in the label ("exact" when every pixel agrees).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.command import run_command
from pipeline.degrade import degrade
from pipeline.io import pil_jpeg, to_rgb8_array, to_tensor
from pipeline.valset import center_crop, read_split_images

SIGMAS_255 = (0.0, 10.0, 25.0, 50.0)
QUALITIES = (0, 90, 50, 20, 10)  # 0 = no JPEG
LABEL_PX = 14


def preview_cell(clean8: np.ndarray, sigma: float, quality: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Device output and Pillow output for the same noise draw."""
    n = 1
    params = {
        "sigma_255": torch.full((n,), sigma),
        "quality": torch.full((n,), quality),
        "subsampling": torch.full((n,), 2),
        "quality2": torch.zeros(n, dtype=torch.long),
        "shift_y": torch.zeros(n, dtype=torch.long),
        "shift_x": torch.zeros(n, dtype=torch.long),
    }
    generator = torch.Generator().manual_seed(seed)
    device_out = to_rgb8_array(degrade(to_tensor(clean8)[None], params, generator)[0])
    generator = torch.Generator().manual_seed(seed)
    noise_only = dict(params, quality=torch.zeros(n, dtype=torch.long))
    noisy8 = to_rgb8_array(degrade(to_tensor(clean8)[None], noise_only, generator)[0])
    libjpeg_out = pil_jpeg(noisy8, quality) if quality else noisy8
    return device_out, libjpeg_out


def _label(a: np.ndarray, b: np.ndarray, sigma: float, quality: int) -> str:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    agreement = "exact" if mse == 0 else f"{10 * np.log10(255**2 / mse):.1f} dB"
    return f"s={sigma:g} q={quality or 'none'} | device vs libjpeg: {agreement}"


def render(images: list[np.ndarray], patch: int) -> Image.Image:
    """The grid as a PIL image; one training image per row."""
    cell_w, cell_h = 2 * patch + 4, patch + LABEL_PX
    canvas = Image.new("RGB", (cell_w * len(QUALITIES), cell_h * len(SIGMAS_255)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, sigma in enumerate(SIGMAS_255):
        clean8 = center_crop(images[row % len(images)], patch)
        for col, quality in enumerate(QUALITIES):
            ours, real = preview_cell(clean8, sigma, quality, seed=row * 100 + col)
            x, y = col * cell_w, row * cell_h
            canvas.paste(Image.fromarray(ours), (x, y + LABEL_PX))
            canvas.paste(Image.fromarray(real), (x + patch + 2, y + LABEL_PX))
            draw.text((x + 2, y + 1), _label(ours, real, sigma, quality)[: cell_w // 6], fill="black")
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--patch", type=int, default=128, help="crop size of each tile, pixels")
    args = parser.parse_args(argv)
    images = read_split_images(args.shards, "train", limit=len(SIGMAS_255))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render(images, args.patch).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m pipeline.preview"))
