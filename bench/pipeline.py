"""Stage-by-stage throughput of the data pipeline: `python -m bench.pipeline --shards DIR [--out FILE.json]`.

Stages, each timed alone after a warm-up, then together: read (tar bytes), decode (Pillow or pillow-simd, whichever
is installed; DALI's CPU decoder where installed), crop/augment, degrade (Pillow/libjpeg one image at a time on
one core, a process pool of the same on all cores, and the batched device op), and the loaders end to end with
and without the device degradation. Medians over `--repeats`; the device is synchronised before clocks are read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL
import torch
import webdataset as wds

from bench.shard_format import time_dali
from bench.timing import median_rate
from pipeline.config import DegradeConfig, LoaderConfig
from pipeline.degrade import degrade, param_row, sample_and_degrade, sample_params
from pipeline.io import decode_rgb8
from pipeline.loader import make_loader
from pipeline.loader_torch import cut
from pipeline.reference import degrade_reference
from pipeline.shard_format import IMAGE_EXTS, read_manifest, split_shards
from pipeline.stream import crop_params


def _row(stage: str, img_per_s: float, pixels_per_img: float, note: str = "") -> dict:
    return {
        "stage": stage,
        "img_per_s": round(img_per_s, 1),
        "mpix_per_s": round(img_per_s * pixels_per_img / 1e6, 2),
        "note": note,
    }


def _read_through(path: str, chunk: int = 1 << 22) -> int:
    """Read a file in 4 MiB chunks (no whole-file buffer); returns the bytes read."""
    total = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            total += len(block)
    return total


def _pillow_pool_job(args: tuple[np.ndarray, dict, int]) -> np.ndarray:
    patch, row, seed = args
    return degrade_reference(patch, row, np.random.default_rng(seed))


def bench_stages(shards: Path, device: torch.device, patch: int, batch: int, repeats: int, limit: int) -> list[dict]:
    urls = [str(p) for p in split_shards(shards, "train")]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None)
    payloads = [next(s[e] for e in IMAGE_EXTS if e in s) for s in itertools.islice(dataset, limit)]
    images = [decode_rgb8(p) for p in payloads]
    pixels = float(np.mean([a.shape[0] * a.shape[1] for a in images]))
    pil_name = "pillow-simd" if ".post" in PIL.__version__ else "pillow"
    samples = read_manifest(shards)["splits"]["train"]["samples"]
    rows = [
        _row(
            "read tar bytes",
            median_rate(lambda: [_read_through(u) for u in urls], samples, repeats, device),
            pixels,
            "all train tars, page cache warm",
        ),
        _row(
            f"decode ({pil_name} {PIL.__version__})",
            median_rate(lambda: [decode_rgb8(p) for p in payloads], len(payloads), repeats, device),
            pixels,
        ),
    ]
    dali_s = time_dali(payloads, threads=os.cpu_count() or 1)
    if dali_s is not None:
        rows.append(_row("decode (DALI cpu, all cores)", len(payloads) / dali_s, pixels))
    crops_per_image = 4
    rows.append(
        _row(
            f"crop+flip+rot90 ({crops_per_image} x {patch}px per image)",
            median_rate(
                lambda: [cut(a, crop_params(0, i, 0, 0, crops_per_image), patch) for i, a in enumerate(images)],
                len(images) * crops_per_image,
                repeats,
                device,
            ),
            patch * patch,
        )
    )
    rows += bench_degrade(images, device, patch, batch, repeats)
    return rows


def bench_degrade(images: list[np.ndarray], device: torch.device, patch: int, batch: int, repeats: int) -> list[dict]:
    """Pillow per image (1 core, and a pool on all cores) versus the batched device op, same parameter draws.

    Every variant degrades the same 8 batches of patches (noise and JPEG on every patch, full ranges).
    """
    cfg = DegradeConfig(p_noise_only=0.0, p_jpeg_only=0.0, p_both=1.0, p_neither=0.0, curriculum=False)
    total = 8 * batch
    patches = [images[i % len(images)][:patch, :patch] for i in range(total)]
    params = sample_params(total, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    jobs = [(p, param_row(params, i), i) for i, p in enumerate(patches)]
    rows = [
        _row(
            "degrade: Pillow/libjpeg, 1 core",
            median_rate(lambda: [_pillow_pool_job(j) for j in jobs], total, repeats, device),
            patch * patch,
        )
    ]
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_pillow_pool_job, jobs))
        rows.append(
            _row(
                f"degrade: Pillow/libjpeg, pool of {workers}",
                median_rate(
                    lambda: list(pool.map(_pillow_pool_job, jobs, chunksize=max(1, total // (4 * workers)))),
                    total,
                    repeats,
                    device,
                ),
                patch * patch,
            )
        )
    clean = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).to(device).float().div(255)
    chunks = [{k: v[i : i + batch].to(device) for k, v in params.items()} for i in range(0, total, batch)]
    generator = torch.Generator(device).manual_seed(0)
    rows.append(
        _row(
            f"degrade: batched device op ({device.type}, batch {batch})",
            median_rate(
                lambda: [degrade(clean[i * batch : (i + 1) * batch], p, generator) for i, p in enumerate(chunks)],
                total,
                repeats,
                device,
            ),
            patch * patch,
            f"{torch.get_num_threads()} torch threads",
        )
    )
    return rows


def bench_loaders(
    shards: Path, device: torch.device, cfg: LoaderConfig, steps: int, repeats: int, backends: tuple[str, ...] = ()
) -> list[dict]:
    """Loaders end to end (crops/s on the device), and the torch loader followed by the device degradation.

    `backends`: which to time (default: torch, and DALI when installed).
    """
    rows = []
    for backend in backends or ["torch"] + (["dali"] if _dali_installed() else []):
        loader = make_loader(shards, "train", replace(cfg, backend=backend), device)
        rows.append(
            _row(
                f"loader {backend} ({cfg.workers} workers) -> device",
                _loader_rate(loader, steps, repeats, cfg, device),
                cfg.patch_size**2,
            )
        )
        if backend == "torch":
            rate = _loader_rate(loader, steps, repeats, cfg, device, DegradeConfig(curriculum=False))
            rows.append(_row("loader torch + device degrade (together)", rate, cfg.patch_size**2))
    return rows


def _loader_rate(
    loader, steps: int, repeats: int, cfg: LoaderConfig, device: torch.device, degrade_cfg: DegradeConfig | None = None
) -> float:
    generator = torch.Generator(device).manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            clean = next(loader)
            if degrade_cfg is not None:
                sample_and_degrade(clean, degrade_cfg, generator)

    return median_rate(run, steps * cfg.batch_size, repeats, device)


def _dali_installed() -> bool:
    from pipeline.loader import dali_available

    return dali_available()


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | img/s | MPix/s | note |", "|---|---:|---:|---|"]
    lines += [f"| {r['stage']} | {r['img_per_s']} | {r['mpix_per_s']} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (the table is always printed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="loader batches per timed repeat")
    parser.add_argument("--limit", type=int, default=64, help="images used by the per-stage timings")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0 = cores - workers // 2, as the trainer uses)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.workers // 2))
    rows = bench_stages(args.shards, device, args.patch, args.batch, args.repeats, args.limit)
    loader_cfg = LoaderConfig(patch_size=args.patch, batch_size=args.batch, workers=args.workers)
    rows += bench_loaders(args.shards, device, loader_cfg, args.steps, args.repeats)
    result = {
        "rows": rows,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "patch": args.patch,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": args.workers,
        "batch": args.batch,
        "shards": str(args.shards),
    }
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
