"""`python -m export torchscript|onnx|tensorrt --model CKPT --out FILE [options]`: export, then check parity.

Each exporter compares its file with eager PyTorch on an input whose size is not a multiple of the model's stride,
prints the max abs difference and exits non-zero above its tolerance (the file is then not written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.calibration import CalibrationError
from export.parity import ExportError, load_source
from export.trt_plan import TARGETS, PlanError, make_profile, parse_shape
from model import SHIPPED_MODEL
from pipeline.command import CommandError, run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="format", required=True)
    for name in ("torchscript", "onnx", "tensorrt"):
        p = sub.add_parser(name)
        p.add_argument("--model", type=Path, default=None, help=f"checkpoint (default: {SHIPPED_MODEL.name})")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed against eager")
        if name == "torchscript":
            p.add_argument("--conditioned", action="store_true", help="add the (N, 4) `condition` input")
    onnx = sub.choices["onnx"]
    strength = onnx.add_mutually_exclusive_group()
    strength.add_argument(
        "--conditioned",
        action="store_true",
        default=None,
        help="the (N, 4) `condition` input (default: when the model has one)",
    )
    strength.add_argument(
        "--blind", dest="conditioned", action="store_false", default=None, help="no `condition` input"
    )
    onnx.add_argument("--opset", type=int, default=17, help="17 (default, TensorRT 8.6) or 18+ (dynamo exporter)")
    onnx.add_argument("--fp16", action="store_true", help="float16 weights/activations, LayerNorm statistics fp32")
    onnx.add_argument("--static-shape", type=parse_shape, default=None, help="fix the input shape, e.g. 1x3x1024x1024")
    trt = sub.choices["tensorrt"]
    trt.add_argument("--onnx", type=Path, default=None, help="build from this ONNX file instead of --model")
    trt.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None, help="default: fp32")
    trt.add_argument("--target", choices=sorted(TARGETS), default=None, help="a deployment GPU preset")
    trt.add_argument("--min-shape", type=parse_shape, default=(1, 3, 16, 16))
    trt.add_argument("--opt-shape", type=parse_shape, default=(1, 3, 512, 512))
    trt.add_argument("--max-shape", type=parse_shape, default=(1, 3, 2048, 2048))
    trt.add_argument("--calib-shards", type=Path, default=None, help="shards folder whose val split calibrates int8")
    trt.add_argument("--calib-batches", type=int, default=16)
    trt.add_argument("--calib-cache", type=Path, default=None, help="INT8 calibration cache (read, else written)")
    trt.add_argument("--timing-cache", type=Path, default=None, help="timing cache file (read, then updated)")
    trt.add_argument("--workspace-gib", type=float, default=4.0)
    trt.add_argument("--device", type=int, default=0, help="CUDA device index")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> float:
    """Dispatch to the exporter named by `args.format`; returns its max abs difference."""
    if args.format == "tensorrt":
        from export.tensorrt import export_tensorrt

        target = TARGETS[args.target] if args.target else None
        profile = make_profile(args.min_shape, args.opt_shape, args.max_shape)
        source = None if args.onnx else load_source(args.model or SHIPPED_MODEL)
        return export_tensorrt(
            args.out,
            profile=profile,
            onnx_path=args.onnx,
            source=source,
            precision=args.precision,
            target=target,
            tolerance=args.tolerance,
            calib_shards=args.calib_shards,
            calib_batches=args.calib_batches,
            calib_cache=args.calib_cache,
            timing_cache=args.timing_cache,
            workspace_gib=args.workspace_gib,
            device_index=args.device,
        )
    source = load_source(args.model or SHIPPED_MODEL)
    if args.format == "torchscript":
        from export.torchscript import TOLERANCE, export_torchscript

        tolerance = TOLERANCE if args.tolerance is None else args.tolerance
        return export_torchscript(source, args.out, conditioned=args.conditioned, tolerance=tolerance)
    from export.onnx import export_onnx

    return export_onnx(
        source,
        args.out,
        opset=args.opset,
        fp16=args.fp16,
        conditioned=args.conditioned,
        pooled_io=args.opset < 18,  # what tiled inference of the file needs (infer.backends)
        static_shape=args.static_shape,
        tolerance=args.tolerance,
    )


def check_out(out: Path) -> None:
    """Before exporting: --out names a file in a folder this process can write."""
    if out.is_dir():
        raise CommandError(f"--out {out} is a folder: name the file to write, e.g. {out / 'model.onnx'}")
    folder = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: cannot write in {folder} (permissions or a read-only disk); choose another")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_out(args.out)
    try:
        run(args)
    except (ExportError, PlanError, CalibrationError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m export"))
