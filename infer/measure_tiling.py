"""How far tiled restoration is from untiled: `python -m infer.measure_tiling --data DIR [--model PATH] ...`.

For each image (degraded with the real libjpeg, `pipeline.reference`) and each tile size, overlap and number of
statistics passes, it restores the image whole and tiled and reports the PSNR change against the clean image
(tiled minus untiled, mean and worst over images), the PSNR of the tiled output against the untiled one, and the
largest pixel difference in 8-bit levels. Written to weigh a model's tiling behaviour (docs/notes/infer.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from infer.backends import open_backend
from infer.tiling import restore
from pipeline.io import IMAGE_SUFFIXES, load_rgb8, to_tensor
from pipeline.reference import degrade_reference


def measure(args: argparse.Namespace) -> list[dict]:
    from evaluate.metrics import psnr  # the project's one PSNR; only this measuring tool needs evaluate/

    backend = open_backend(args.model, args.device)
    files = sorted(f for f in Path(args.data).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    rng = np.random.default_rng(0)
    configs = [(t, o, p) for t in args.tiles for o in args.overlaps for p in args.passes]
    found: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {c: [] for c in configs}
    for path in files:
        clean8 = load_rgb8(path)
        for sigma_255, quality in args.degradations:
            params = {"sigma_255": sigma_255, "quality": quality, "subsampling": 2, "quality2": 0}
            clean = to_tensor(clean8)[None]
            degraded = to_tensor(degrade_reference(clean8, params, rng))[None]
            whole = backend(degraded)
            whole_db = psnr(whole, clean).item()
            for tile, overlap, passes in configs:
                tiled = restore(backend, degraded, tile, overlap, stat_passes=passes)
                found[(tile, overlap, passes)].append(
                    (psnr(tiled, clean).item() - whole_db, psnr(tiled, whole).item(),
                     (tiled - whole).abs().max().item() * 255)
                )  # fmt: skip
        print(f"{path.name} {clean8.shape[1]}x{clean8.shape[0]}", flush=True)
    return [_summary(config, values) for config, values in found.items()]


def _summary(config: tuple[int, int, int], values: list[tuple[float, float, float]]) -> dict:
    delta = np.array([v[0] for v in values])
    return {
        "tile": config[0], "overlap": config[1], "stat_passes": config[2], "images": len(values),
        "mean_delta_db": float(delta.mean()), "worst_abs_delta_db": float(np.abs(delta).max()),
        "min_psnr_vs_untiled_db": float(min(v[1] for v in values)),
        "max_abs_diff_levels": float(max(v[2] for v in values)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of clean images")
    parser.add_argument("--model", type=Path, help="model file (default: model.SHIPPED_MODEL)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=8, help="first N images of the folder")
    parser.add_argument("--tiles", type=ints, default=[256, 384])
    parser.add_argument("--overlaps", type=ints, default=[32])
    parser.add_argument("--passes", type=ints, default=[0, 1], help="statistics passes (infer.pooling)")
    parser.add_argument("--degradations", default="25:50,10:90", help="sigma:quality pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.degradations = [(float(s), int(q)) for s, q in (pair.split(":") for pair in args.degradations.split(","))]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args)
    print("| tile | overlap | stat passes | images | mean dPSNR dB | worst abs dPSNR dB | min PSNR vs untiled dB "
          "| max abs diff (levels) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for r in rows:
        print(
            f"| {r['tile']} | {r['overlap']} | {r['stat_passes']} | {r['images']} | {r['mean_delta_db']:+.4f} | "
            f"{r['worst_abs_delta_db']:.4f} | {r['min_psnr_vs_untiled_db']:.1f} | {r['max_abs_diff_levels']:.1f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
