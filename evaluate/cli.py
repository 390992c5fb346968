"""Command line: `python -m evaluate --model PATH|identity --data DIR --out DIR [options]` (see `--help`)."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import PIL
import torch
from torch import nn

from evaluate.baselines import BASELINES
from evaluate.harness import evaluate, resolve_device
from evaluate.protocols import PROTOCOLS, parse_qualities, parse_sigmas
from evaluate.report import write_outputs
from pipeline.io import IMAGE_SUFFIXES, load_rgb8


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint path (model.load_model) or 'identity' (no model)")
    parser.add_argument("--data", required=True, type=Path, help="folder of clean test images (sorted by name)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--sigmas", default="5,15,25,50", help="Gaussian sigmas, 0-255 scale (default 5,15,25,50)")
    parser.add_argument("--qualities", default="10,30,50,90,none", help="JPEG qualities 1-100 or 'none'")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="real", help="real (libjpeg) or anchor (papers)")
    parser.add_argument("--y", action="store_true", help="measure on BT.601 luma Y instead of RGB")
    parser.add_argument("--crop-border", type=int, default=0, help="pixels removed from each side before measuring")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: cuda, else mps, else cpu)")
    parser.add_argument("--baseline", choices=BASELINES, default=None, help="also run a classical baseline (slow)")
    parser.add_argument("--told", action="store_true", help="also run a conditioned model told the true sigma/quality")
    parser.add_argument("--crops-per-cell", type=int, default=2, help="comparison crops saved per cell")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def list_images(folder: Path, limit: int | None) -> list[Path]:
    """Image files directly in `folder`, sorted by name, the first `limit` of them."""
    if not folder.is_dir():
        raise SystemExit(f"--data {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    paths = paths[:limit] if limit is not None else paths
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def load_model_arg(spec: str) -> nn.Module | None:
    """'identity' -> None (restored = degraded); anything else is a checkpoint path for `model.load_model`."""
    if spec == "identity":
        return None
    if not Path(spec).is_file():
        raise SystemExit(f"--model {spec} is neither 'identity' nor a checkpoint file")
    from model import load_model

    return load_model(spec, map_location="cpu")


def versions() -> dict[str, str]:
    """Versions of the software that produced the numbers."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        sigmas, qualities = parse_sigmas(args.sigmas), parse_qualities(args.qualities)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    paths = list_images(args.data, args.limit)
    images = [np.array(load_rgb8(p)) for p in paths]  # writable copies: torch warns on read-only arrays
    model = load_model_arg(args.model)
    device = resolve_device(args.device)
    print(f"evaluating {args.model} on {len(images)} images from {args.data} ({args.protocol}, {device})", flush=True)
    result = evaluate(
        model,
        images,
        sigmas,
        qualities,
        args.protocol,
        device,
        names=[p.stem for p in paths],
        y_channel=args.y,
        crop_border=args.crop_border,
        baseline=args.baseline,
        told=args.told,
        crops_per_cell=args.crops_per_cell,
        progress=not args.quiet,
    )
    for message in result["messages"]:
        print(f"note: {message}", file=sys.stderr)
    result.update(model=args.model, data=str(args.data), images=[p.name for p in paths], versions=versions())
    write_outputs(result, args.out)
    for cell in result["cells"]:
        quality = "none" if cell["quality"] is None else cell["quality"]
        print(
            f"sigma {cell['sigma']:>4g} quality {quality:>4}: PSNR {cell['psnr_input']:.2f} -> "
            f"{cell['psnr_model']:.2f} dB ({cell['psnr_gain']:+.2f})"
            + "".join(f", {m} {cell[f'psnr_{m}']:.2f} dB" for m in result["methods"] if m not in ("input", "model"))
            + f", {cell['img_per_s']:.2f} img/s"
        )
    print(f"wrote {args.out}/results.json, results.md, per_image.csv, failure.md, plots and crops")
    return 0
