"""The trainer's degradation call against Pillow/libjpeg: `python -m bench degradation --out FILE.json [options]`.

One comparison serves every degradation figure (`compare`): real (batch, patch, patch) uint8 patches, degraded with
the default training mix (no curriculum) by
- `pillow`: `pipeline.reference.degrade_reference` (numpy noise + libjpeg), one patch at a time on one core;
- `pillow_pool`: the same on a process pool of `--pool` workers (default: every core; pickling both ways included),
  what a user would otherwise run;
- each device codec (`--codecs`, of `pipeline.jpeg.CODECS`): `pipeline.degrade.sample_and_degrade` on the batch
  resident on `--device`, and the aten ops one call launches (`pipeline.sync.OpCounter`).
Each contender's call repeats its work to fill about `--call-s` seconds; the contenders run in interleaved rounds
(`bench.interleave`); MPix/s of the median round and each codec's ratio to `pillow` and to the pool.
`--batches` x `--patches` sweeps the grid. `--fidelity DIR` instead measures how close the device JPEG is to
libjpeg: mean PSNR of decoded pixels per quality (capped at 100 dB: identical pixels).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench import calls_for, interleave, machine, rates, save, significant, table
from pipeline.config import DegradeConfig
from pipeline.degrade import param_row, sample_and_degrade, sample_params, shifted_jpeg
from pipeline.io import IMAGE_SUFFIXES, load_rgb8, pil_jpeg, to_rgb8_array, to_tensor
from pipeline.jpeg import SUBSAMPLING, jpeg
from pipeline.reference import degrade_reference, jpeg_shifted
from pipeline.sync import OpCounter
from shards.synth import render

QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
PSNR_CAP_DB = 100.0


def cut_patches(images: list[np.ndarray], count: int, patch: int, seed: int = 0) -> list[np.ndarray]:
    """`count` random (patch, patch, 3) uint8 crops, cycling over `images`; refuses images smaller than `patch`."""
    usable = [a for a in images if min(a.shape[:2]) >= patch]
    if not usable:
        raise ValueError(f"no image is at least {patch} px on its shorter side")
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        image = usable[i % len(usable)]
        top = int(rng.integers(0, image.shape[0] - patch + 1))
        left = int(rng.integers(0, image.shape[1] - patch + 1))
        crops.append(np.ascontiguousarray(image[top : top + patch, left : left + patch]))
    return crops


def _reference_job(job: tuple[np.ndarray, dict, int]) -> np.ndarray:
    patch, params, seed = job
    return degrade_reference(patch, params, np.random.default_rng(seed))


def _device_call(clean: torch.Tensor, codec: str):
    cfg = DegradeConfig(curriculum=False, codec=codec)
    noise, draws = torch.Generator(clean.device).manual_seed(0), torch.Generator().manual_seed(0)
    return lambda: sample_and_degrade(clean, cfg, noise, 1.0, draws)


def _ops(fn, codec: str) -> dict:
    if codec == "compiled":  # a dispatch mode sends compiled code back to eager: its ops cannot be seen so
        return {"total": None, "why": "a dispatch mode runs compiled code eagerly; count with the profiler"}
    with OpCounter() as counter:
        fn()
    return {"total": counter.total, "top": dict(counter.counts.most_common(8))}


def compare(
    patches: list[np.ndarray],
    codecs: tuple[str, ...],
    rounds: int,
    device: torch.device,
    pool: int = 0,
    call_s: float = 0.25,
    single: bool = True,
) -> dict:
    """Every contender on the same patches in interleaved rounds (see the module docstring); `pool` 0: no pool."""
    batch, size = len(patches), patches[0].shape[0]
    cfg = DegradeConfig(curriculum=False)
    params = sample_params(batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    jobs = [(p, param_row(params, i), i) for i, p in enumerate(patches)]
    clean = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).to(device).float().div(255)  # (N, 3, P, P)
    one: dict[str, Callable[[], object]] = {}
    if single:
        one["pillow"] = lambda: [_reference_job(j) for j in jobs]
    for codec in codecs:
        one[codec] = _device_call(clean, codec)
        for _ in range(4):  # compiles every group shape the codec meets
            one[codec]()
    executor = ProcessPoolExecutor(pool) if pool else None
    try:
        if executor is not None:
            chunk = max(1, batch // (4 * pool))
            list(executor.map(_reference_job, jobs))  # start the workers before the trial call
            one["pillow_pool"] = lambda: list(executor.map(_reference_job, jobs, chunksize=chunk))
        repeats = {name: calls_for(fn, device, call_s) for name, fn in one.items()}
        calls = {name: (lambda fn=fn, k=repeats[name]: [fn() for _ in range(k)]) for name, fn in one.items()}
        times = interleave(calls, rounds, device, warmup=0)
    finally:
        if executor is not None:
            executor.shutdown()
    result = {n: rates(t, batch * repeats[n], size * size) | {"calls_per_round": repeats[n]} for n, t in times.items()}
    for name in codecs:
        result[name]["ops_per_call"] = _ops(one[name], name)
        for base in ("pillow", "pillow_pool"):
            if base in result:
                result[name][f"vs_{base}"] = significant(result[name]["mpix_per_s"] / result[base]["mpix_per_s"])
    return result


def sweep(images, batches, patches, rounds, device, pool: int = 0, call_s: float = 0.25, codec: str = "auto") -> dict:
    """One row per (batch, patch): device MPix/s, the CPU pool's MPix/s at that batch and patch, their ratio."""
    pool = pool or os.cpu_count() or 1
    rows, skipped = [], []
    for patch in patches:
        if not any(min(a.shape[:2]) >= patch for a in images):
            skipped.append({"patch": patch, "reason": f"no image is at least {patch} px on its shorter side"})
            continue
        for batch in batches:
            found = compare(cut_patches(images, batch, patch), (codec,), rounds, device, pool, call_s, single=False)
            dev, cpu = found[codec], found["pillow_pool"]
            rows.append(
                {
                    "batch": batch,
                    "patch": patch,
                    "device": dev,
                    "cpu_pool": cpu,
                    "device_mpix_per_s": dev["mpix_per_s"],
                    "cpu_pool_mpix_per_s": cpu["mpix_per_s"],
                    "speedup": dev["vs_pillow_pool"],
                }
            )
    mix = "training default, no curriculum (noise and/or JPEG, 20% double JPEG, 4:2:0/4:2:2/4:4:4)"
    return {"mix": mix, "cpu_workers": pool, "rows": rows, "skipped": skipped}


def sweep_markdown(section: dict) -> str:
    skipped = [
        {"batch": "-", "patch": s["patch"], "device_mpix_per_s": f"skipped: {s['reason']}"} for s in section["skipped"]
    ]
    rows = section["rows"] + skipped
    columns = {"batch": "batch", "patch px": "patch", "device MPix/s": "device_mpix_per_s"}
    columns |= {"CPU pool MPix/s": "cpu_pool_mpix_per_s", "device / CPU pool": lambda r: r.get("speedup", "")}
    return table(rows, columns)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images through the project's one metric, capped (identical images -> the cap)."""
    from evaluate.metrics import psnr

    return min(PSNR_CAP_DB, float(psnr(to_tensor(a)[None], to_tensor(b)[None])[0]))


def fidelity(images: list[np.ndarray], device: torch.device) -> dict:
    """Mean PSNR against Pillow per method and quality, and the fraction of bit-identical pixels."""
    from kornia.enhance import jpeg_codec_differentiable

    def ours(rgb8: np.ndarray, q: int, sub: str) -> np.ndarray:
        code = torch.tensor([SUBSAMPLING[sub]], device=device)
        return to_rgb8_array(jpeg(to_tensor(rgb8)[None].to(device), torch.tensor([q], device=device), code)[0])

    def double(rgb8: np.ndarray, q: int) -> np.ndarray:  # q, then 90 with the grid shifted by (3, 5), as degrade()
        once = jpeg(to_tensor(rgb8)[None].to(device), torch.tensor([q], device=device))
        one = torch.ones(1, dtype=torch.long, device=device)
        return to_rgb8_array(shifted_jpeg(once, one * 90, [SUBSAMPLING["4:2:0"]], one * 3, one * 5)[0])

    result: dict[str, dict[str, float]] = {"identical_fraction": {}}
    for q in QUALITIES:
        rows: dict[str, list[float]] = {}
        same = []
        for rgb8 in images:
            for sub, key in (("4:2:0", "device_jpeg"), ("4:4:4", "device_jpeg_444"), ("4:2:2", "device_jpeg_422")):
                ref, mine = pil_jpeg(rgb8, q, sub), ours(rgb8, q, sub)
                rows.setdefault(key, []).append(psnr_uint8(mine, ref))
                same.append(float(np.mean(mine == ref)))
            ref = pil_jpeg(rgb8, q, "4:2:0")
            x = to_tensor(rgb8)[None].to(device)
            kornia = to_rgb8_array(jpeg_codec_differentiable(x, torch.tensor([float(q)], device=device))[0])
            rows.setdefault("kornia", []).append(psnr_uint8(kornia, ref))
            ref2 = jpeg_shifted(ref, 90, "4:2:0", 3, 5)
            rows.setdefault("device_double_jpeg", []).append(psnr_uint8(double(rgb8, q), ref2))
        for key, values in rows.items():
            result.setdefault(key, {})[str(q)] = round(float(np.mean(values)), 2)
        result["identical_fraction"][str(q)] = round(float(np.mean(same)), 6)
    return result


def load_images(folder: Path | None, count: int) -> list[np.ndarray]:
    """Up to `count` images of `folder` (any depth), else generated dead-leaves images."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder else []
    return [load_rgb8(f) for f in files[:count]] if files else [render(i) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="FILE.json; FILE.md beside it")
    parser.add_argument("--images", type=Path, default=None, help="clean images (default: generated dead leaves)")
    parser.add_argument("--batches", default="32", help="comma-separated batch sizes")
    parser.add_argument("--patches", default="128", help="comma-separated patch sizes (px)")
    parser.add_argument("--codecs", default="float64,int32,compiled", help="comma-separated, of auto,compiled,...")
    parser.add_argument("--pool", type=int, default=None, help="Pillow pool workers (default: all cores; 0: none)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--call-s", type=float, default=0.25, help="seconds of work per contender and round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fidelity", action="store_true", help="JPEG fidelity to libjpeg instead of speed")
    parser.add_argument("--limit", type=int, default=32, help="images read from --images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, images = torch.device(args.device), load_images(args.images, args.limit)
    result = machine(device) | {"images": str(args.images or "dead leaves"), "image_count": len(images)}
    if args.fidelity:
        result["fidelity"] = found = fidelity(images, device)
        keys = [k for k in found if k != "identical_fraction"]
        rows = [{"method": k} | {str(q): found[k][str(q)] for q in QUALITIES} for k in keys + ["identical_fraction"]]
        save(result, args.out, table(rows, {"method": "method"} | {str(q): str(q) for q in QUALITIES}))
        return 0
    pool = (os.cpu_count() or 1) if args.pool is None else args.pool
    codecs = tuple(c for c in args.codecs.split(",") if c)
    rows = []
    for patch in (int(p) for p in args.patches.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            found = compare(cut_patches(images, batch, patch, seed=1), codecs, args.rounds, device, pool, args.call_s)
            rows += [{"batch": batch, "patch": patch, "contender": name} | row for name, row in found.items()]
    result |= {"rows": rows, "rounds": args.rounds, "pool_workers": pool}
    ops = lambda r: r.get("ops_per_call", {}).get("total", "")  # noqa: E731
    columns = {"batch": "batch", "patch": "patch", "contender": "contender", "MPix/s": "mpix_per_s"}
    save(
        result,
        args.out,
        table(rows, columns | {"x Pillow": "vs_pillow", "x pool": "vs_pillow_pool", "aten ops per call": ops}),
    )
    return 0
