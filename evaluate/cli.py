"""Command line: `python -m evaluate --model PATH|identity --data DIR --out DIR [options]` (see `--help`)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL
import torch
from torch import nn

from evaluate.baselines import BASELINES, TOLD
from evaluate.harness import evaluate
from evaluate.metrics import SSIM_WINDOW
from evaluate.protocols import PROTOCOLS, parse_qualities, parse_sigmas
from evaluate.report import write_outputs
from evaluate.results import EvalResult, figure
from pipeline.device import resolve_device
from pipeline.io import IMAGE_SUFFIXES, ImageError, explain_error, image_entries, load_rgb8


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
    parser.add_argument(
        "--told",
        nargs="?",
        const="both",
        choices=TOLD,
        help="also run a conditioned model told the true sigma and quality (or only one: --told sigma)",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="average the model over the 8 flips and quarter turns (8x the time)"
    )
    parser.add_argument("--crops-per-cell", type=int, default=2, help="comparison crops saved per cell")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def list_images(folder: Path, limit: int | None) -> list[Path]:
    """Entries named like images directly in `folder`, sorted by name, the first `limit` of them."""
    if limit is not None and limit < 1:
        raise SystemExit(f"--limit must be 1 or more, got {limit} (leave it out to use every image)")
    if not folder.is_dir():
        raise SystemExit(f"--data {folder} is not a folder")
    paths = image_entries(folder)
    paths = paths[:limit] if limit is not None else paths
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def load_images(paths: list[Path]) -> tuple[list[Path], list[np.ndarray], list[str]]:
    """Decode each image (normalisation rule of `pipeline.io`); one unreadable file is named and left out, the
    others are evaluated. Returns the paths kept, their (H, W, 3) uint8 arrays and one message per file left out."""
    kept, images, problems = [], [], []
    for path in paths:
        try:
            image = np.array(load_rgb8(path))  # a writable copy: torch warns on read-only arrays
        except (ImageError, OSError) as err:
            problems.append(f"{path}: {explain_error(err)}")
            continue
        if min(image.shape[:2]) < SSIM_WINDOW:  # SSIM's window would not fit: the other images still count
            height, width = image.shape[:2]
            problems.append(f"{path}: {width}x{height} px, smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
            continue
        images.append(image)
        kept.append(path)
    return kept, images, problems


def load_model_arg(spec: str) -> nn.Module | None:
    """'identity' -> None (restored = degraded); anything else is a checkpoint path for `model.load_model`. A file
    that cannot be used (damaged, empty, another architecture, code inside, NaN weights) exits with the reason."""
    if spec == "identity":
        return None
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--model {spec} is neither 'identity' nor a checkpoint file")
    if path.stat().st_size == 0:
        raise SystemExit(f"--model {spec}: the file is empty (zero bytes)")
    from model import load_model

    try:
        model = load_model(spec, map_location="cpu")
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile) as err:  # torch.load of a cut or damaged file
        raise SystemExit(f"--model {spec}: not a readable checkpoint, truncated or damaged ({err})") from None
    except (ValueError, KeyError, TypeError) as err:  # code inside, another architecture, missing fields
        lines = str(err).split(" Detail: ")[0].splitlines()  # the reason, without torch's pages of detail
        more = f" (+{len(lines) - 2} more lines)" if len(lines) > 2 else ""
        raise SystemExit(f"--model {spec}: {' '.join(line.strip() for line in lines[:2])}{more}") from None
    bad = [
        name for name, value in model.state_dict().items() if value.is_floating_point() and not value.isfinite().all()
    ]
    if bad:
        raise SystemExit(
            f"--model {spec}: {len(bad)} weight tensors hold NaN or inf (e.g. {bad[0]}): a damaged file or a diverged "
            f"run; use an earlier checkpoint"
        )
    return model


def check_out(out: Path) -> None:
    """Before any work: --out must be a folder this process can write (it is created)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder: choose a folder (it is created)")
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    probe.touch()  # an OSError here (read-only, full, no permission) is one line from the command's boundary
    probe.unlink()


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
    if args.ensemble and args.model == "identity":
        raise SystemExit("--ensemble averages a model: --model identity has none")
    check_out(args.out)  # before hours of evaluation, not after
    model = load_model_arg(args.model)  # before decoding: a bad model file fails fast
    paths, images, unreadable = load_images(list_images(args.data, args.limit))
    for problem in unreadable:
        print(f"skipped: {problem}", file=sys.stderr)
    if not images:
        raise SystemExit(f"none of the images in {args.data} can be read (listed above)")
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
        ensemble=args.ensemble,
        crops_per_cell=args.crops_per_cell,
        progress=not args.quiet,
    )
    for message in result["messages"]:
        print(f"note: {message}", file=sys.stderr)
    result["model"], result["data"] = args.model, str(args.data)
    result["images"], result["versions"], result["skipped_images"] = [p.name for p in paths], versions(), unreadable
    write_outputs(result, args.out)
    print_cells(result)
    print(f"wrote {args.out}/results.json, results.md, per_image.csv, failure.md, plots and crops")
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out (listed above and in results.json)", file=sys.stderr)
    return 0


def print_cells(result: EvalResult) -> None:
    """One line per cell: PSNR of the input, the model (gain) and any other method, and the speed."""
    others = [m for m in result["methods"] if m not in ("input", "model")]
    for cell in result["cells"]:
        quality = "none" if cell["quality"] is None else cell["quality"]
        print(
            f"sigma {cell['sigma']:>4g} quality {quality:>4}: PSNR {cell['psnr_input']:.2f} -> "
            f"{cell['psnr_model']:.2f} dB ({cell['psnr_gain']:+.2f})"
            + "".join(f", {m} {figure(cell, f'psnr_{m}'):.2f} dB" for m in others)
            + f", {cell['img_per_s']:.2f} img/s"
        )
