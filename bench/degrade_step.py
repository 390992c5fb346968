"""The trainer's degradation call against Pillow/libjpeg in the same process, side by side, and its op count.

`python -m bench.degrade_step --out out/bench/degrade_step.json` times `pipeline.degrade.sample_and_degrade` (the
default training mix, no curriculum) on (batch, 3, P, P) real patches for each JPEG codec, and the Pillow reference
(`pipeline.reference.degrade_reference`: numpy noise + libjpeg, one patch at a time, same parameter distribution) on
the same patches, in interleaved rounds on `--threads` threads; medians of the rounds and their ratio. It also counts
the aten ops one call launches (`pipeline.sync.OpCounter`). Images: `--images` (default ../shared/data/train/CBSD432,
else generated dead-leaves images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.degradation import cut_patches
from bench.timing import sync
from pipeline.config import DegradeConfig
from pipeline.degrade import param_row, sample_and_degrade, sample_params
from pipeline.io import load_rgb8
from pipeline.jpeg import CODECS
from pipeline.reference import degrade_reference
from pipeline.sync import OpCounter
from shards.synth import render

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "CBSD432"


def load_images(folder: Path, count: int = 32) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png"))[:count] if folder.is_dir() else []
    if files:
        return [load_rgb8(f) for f in files]
    return [render(i) for i in range(count)]


def run(images, batch: int, patch: int, codecs: list[str], rounds: int, device: torch.device) -> dict:
    patches = cut_patches(images, batch, patch, seed=1)
    clean = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).to(device).float().div(255)  # (N, 3, P, P)
    cfg = DegradeConfig(curriculum=False)
    host = sample_params(batch, cfg, torch.Generator().manual_seed(0))
    jobs = [param_row(host, i) for i in range(batch)]
    rng = np.random.default_rng(0)

    def pillow() -> None:
        for patch8, job in zip(patches, jobs, strict=True):
            degrade_reference(patch8, job, rng)

    calls = {"pillow": pillow}
    ops = {}
    for codec in codecs:
        one = DegradeConfig(curriculum=False, codec=codec)
        noise, draws = torch.Generator(device), torch.Generator()
        calls[codec] = lambda one=one, noise=noise, draws=draws: sample_and_degrade(clean, one, noise, 1.0, draws)
        calls[codec]()  # warm up (compiles every group shape the codec meets: a few seeds)
        for seed in range(4):
            draws.manual_seed(seed)
            calls[codec]()
        if codec == "compiled":  # a dispatch mode sends compiled code back to eager: its ops cannot be seen so
            ops[codec] = {"total": None, "why": "a dispatch mode runs compiled code eagerly; count with the profiler"}
            continue
        with OpCounter() as counter:
            calls[codec]()
        ops[codec] = {"total": counter.total, "top": dict(counter.counts.most_common(8))}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    mpix = batch * patch * patch / 1e6
    rates = {name: mpix / statistics.median(t) for name, t in times.items()}
    return {
        "batch": batch,
        "patch": patch,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "mpix_per_s": rates,
        "ratio_to_pillow": {c: rates[c] / rates["pillow"] for c in codecs},
        "ops_per_call": ops,
        "seconds": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--codecs", default="float64,int32,compiled", help=f"comma-separated, of {CODECS[1:]}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(
        load_images(args.images), args.batch, args.patch, args.codecs.split(","), args.rounds, torch.device(args.device)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, rate in result["mpix_per_s"].items():
        ratio = result["ratio_to_pillow"].get(name)
        ops = result["ops_per_call"].get(name, {}).get("total")
        extra = f"  {ratio:.2f}x Pillow, {ops} ops per call" if ratio else ""
        extra = extra.replace(", None ops per call", "")
        print(f"{name:9s} {rate:6.2f} MPix/s{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
