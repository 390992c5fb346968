"""How far tiled restoration is from untiled: `python -m infer.measure_tiling --data DIR [--model PATH] ...`.

For each image (degraded with the real libjpeg, `pipeline.reference`) and each tile size, overlap and way of getting
the pooling statistics (`--stats`, see `infer.stats`), it restores the image whole and tiled and reports
the PSNR change against the clean image (tiled minus untiled, mean and worst over images), the PSNR of the tiled
output against the untiled one, the largest pixel difference in 8-bit levels, and the forward passes the tiles cost
(model pixels run / image pixels). `--mosaic N` joins N x N photos (cropped to the smallest) into one larger real
image, for sizes the data sets lack. Written to weigh a model's tiling behaviour (docs/infer.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from infer.backends import open_backend
from infer.stats import stats_plan
from infer.tiling import restore
from pipeline.command import run_command
from pipeline.io import IMAGE_SUFFIXES, load_rgb8, to_tensor
from pipeline.reference import degrade_reference


def measure(args: argparse.Namespace) -> list[dict]:
    from evaluate.metrics import psnr  # the project's one PSNR; only this measuring tool needs evaluate/

    backend = CountingBackend(open_backend(args.model, args.device, runtime=args.runtime))
    files = sorted(f for f in Path(args.data).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    rng = np.random.default_rng(0)
    configs = [(t, o, p) for t in args.tiles for o in args.overlaps for p in args.stats]
    for _, _, stats in configs:
        stats_plan(backend, stats)  # fail on a bad --stats before the long run
    found: dict[tuple, list[tuple[float, float, float]]] = {c: [] for c in configs}
    count = args.mosaic**2
    for first in range(0, len(files) - count + 1, count):
        images = [load_rgb8(path) for path in files[first : first + count]]
        clean8 = mosaic(images, args.mosaic)
        for sigma_255, quality in args.degradations:
            params = {"sigma_255": sigma_255, "quality": quality, "subsampling": 2, "quality2": 0}
            clean = to_tensor(clean8)[None]
            degraded = to_tensor(degrade_reference(clean8, params, rng))[None]
            whole = backend.backend(degraded)
            whole_db = psnr(whole, clean).item()
            for tile, overlap, stats in configs:
                backend.pixels = 0
                tiled = restore(backend, degraded, tile, overlap, stats=stats)
                cost = backend.pixels / (clean8.shape[0] * clean8.shape[1])
                found[(tile, overlap, stats)].append(
                    (
                        psnr(tiled, clean).item() - whole_db,
                        psnr(tiled, whole).item(),
                        (tiled - whole).abs().max().item() * 255,
                        cost,
                    )
                )
        names = ", ".join(path.name for path in files[first : first + count])
        print(f"{names}: {clean8.shape[1]}x{clean8.shape[0]}", flush=True)
    return [_summary(config, values) for config, values in found.items()]


class CountingBackend:
    """A backend that counts the pixels it is asked to restore (`pixels`), to state what tiling costs in passes."""

    def __init__(self, backend) -> None:
        self.backend, self.pixels = backend, 0

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def __call__(self, degraded: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.pixels += degraded.shape[0] * degraded.shape[-2] * degraded.shape[-1]
        return self.backend(degraded, *args, **kwargs)


def mosaic(images: list[np.ndarray], side: int) -> np.ndarray:
    """`side` x `side` (H, W, 3) uint8 images, each centre-cropped to the smallest height and width, joined."""
    height, width = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
    crops = [i[(i.shape[0] - height) // 2 :][:height, (i.shape[1] - width) // 2 :][:, :width] for i in images]
    return np.concatenate([np.concatenate(crops[r * side : (r + 1) * side], axis=1) for r in range(side)], axis=0)


def _summary(config: tuple, values: list[tuple[float, float, float]]) -> dict:
    delta = np.array([v[0] for v in values])
    return {
        "tile": config[0],
        "overlap": config[1],
        "stats": config[2],
        "images": len(values),
        "mean_delta_db": float(delta.mean()),
        "worst_abs_delta_db": float(np.abs(delta).max()),
        "min_psnr_vs_untiled_db": float(min(v[1] for v in values)),
        "max_abs_diff_levels": float(max(v[2] for v in values)),
        "passes": float(np.mean([v[3] for v in values])),
    }


def main(argv: list[str] | None = None) -> None:
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of clean images")
    parser.add_argument("--model", type=Path, help="model file (default: model.SHIPPED_MODEL)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="auto", help="auto, torch, onnxruntime, openvino (infer.backends)")
    parser.add_argument("--limit", type=int, default=8, help="first N images of the folder")
    parser.add_argument("--tiles", type=ints, default=[256, 384])
    parser.add_argument("--overlaps", type=ints, default=[32])
    parser.add_argument(
        "--stats",
        type=lambda text: text.split(","),
        default=["local", "sample:4", "passes:1"],
        help="comma-separated ways of getting the pooling statistics (infer.stats)",
    )
    parser.add_argument("--mosaic", type=int, default=1, help="join N x N images into one (default 1: as they are)")
    parser.add_argument("--degradations", default="25:50,10:90", help="sigma:quality pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.degradations = [(float(s), int(q)) for s, q in (pair.split(":") for pair in args.degradations.split(","))]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args)
    print(
        "| tile | overlap | stats | images | mean dPSNR dB | worst abs dPSNR dB | min PSNR vs untiled dB "
        "| max abs diff (levels) | model passes |\n" + "| --- " * 9 + "|"
    )
    for r in rows:
        print(
            f"| {r['tile']} | {r['overlap']} | {r['stats']} | {r['images']} | {r['mean_delta_db']:+.4f} | "
            f"{r['worst_abs_delta_db']:.4f} | {r['min_psnr_vs_untiled_db']:.1f} | {r['max_abs_diff_levels']:.1f} | "
            f"{r['passes']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m infer.measure_tiling"))
