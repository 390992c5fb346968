"""Device degradation throughput per batch and patch size, against Pillow/libjpeg on every CPU core.

The device side is the trainer's own call, `pipeline.degrade.sample_and_degrade` (draw parameters, noise, clip,
8-bit, JPEG, optional shifted second JPEG), on batches of real patches already on the device. The baseline is what a
user would otherwise run: a process pool of `os.cpu_count()` workers applying `pipeline.reference.degrade_reference`
(numpy noise + Pillow/libjpeg) to the same kind of patches, one at a time, with parameters drawn from the same
distribution (the full training mix, no curriculum). Both report MPix/s; `speedup` = device / CPU pool.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from bench.timing import measure, significant, sync
from pipeline.config import DegradeConfig
from pipeline.degrade import param_row, sample_and_degrade, sample_params
from pipeline.reference import degrade_reference

CALL_S = 0.25  # target seconds per timed call: long enough that clock resolution and launch latency vanish


def calls_for(fn: Callable[[], object], device: torch.device, call_s: float, most: int = 10_000) -> int:
    """How many calls of `fn` fill about `call_s` seconds, from one timed trial call (which also warms up)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return max(1, min(most, math.ceil(call_s / max(time.perf_counter() - start, 1e-9))))


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


def cpu_pool_rate(
    images: list[np.ndarray], patch: int, repeats: int, workers: int, cfg: DegradeConfig, call_s: float = CALL_S
) -> dict:
    """MPix/s of `degrade_reference` over a pool of `workers` processes (pickling the patches both ways included)."""
    trial = cut_patches(images, 4 * workers, patch)
    cpu = torch.device("cpu")
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_reference_job, _jobs(trial, cfg)))  # start the workers before the trial call
        rounds = calls_for(lambda: list(pool.map(_reference_job, _jobs(trial, cfg))), cpu, call_s)
        jobs = _jobs(cut_patches(images, rounds * len(trial), patch), cfg)
        chunk = max(1, len(jobs) // (4 * workers))
        result = measure(
            lambda: list(pool.map(_reference_job, jobs, chunksize=chunk)), len(jobs), repeats, cpu, patch * patch
        )
    return result | {"workers": workers}


def _jobs(patches: list[np.ndarray], cfg: DegradeConfig) -> list[tuple[np.ndarray, dict, int]]:
    params = sample_params(len(patches), cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    return [(p, param_row(params, i), i) for i, p in enumerate(patches)]


def device_rate(
    images: list[np.ndarray],
    batch: int,
    patch: int,
    repeats: int,
    device: torch.device,
    cfg: DegradeConfig,
    call_s: float = CALL_S,
) -> dict:
    """MPix/s of `sample_and_degrade` on (batch, 3, patch, patch) batches resident on `device`."""
    patches = cut_patches(images, batch, patch, seed=1)
    clean = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).to(device).float().div(255)  # (N, 3, P, P)
    generator = torch.Generator(device).manual_seed(0)
    calls = calls_for(lambda: sample_and_degrade(clean, cfg, generator), device, call_s)

    def run() -> None:
        for _ in range(calls):
            sample_and_degrade(clean, cfg, generator)

    return measure(run, calls * batch, repeats, device, patch * patch) | {"calls_per_repeat": calls}


def sweep(
    images: list[np.ndarray],
    batches: tuple[int, ...],
    patches: tuple[int, ...],
    repeats: int,
    device: torch.device,
    workers: int | None = None,
    call_s: float = CALL_S,
) -> dict:
    """One row per (batch, patch): device MPix/s, the CPU pool's MPix/s at that patch size, and their ratio."""
    cfg = DegradeConfig(curriculum=False)
    workers = workers or os.cpu_count() or 1
    rows, baselines, skipped = [], {}, []
    for patch in patches:
        if not any(min(a.shape[:2]) >= patch for a in images):
            skipped.append({"patch": patch, "reason": f"no image is at least {patch} px on its shorter side"})
            continue
        baselines[patch] = cpu_pool_rate(images, patch, repeats, workers, cfg, call_s)
        for batch in batches:
            dev = device_rate(images, batch, patch, repeats, device, cfg, call_s)
            cpu_mpix = baselines[patch]["mpix_per_s"]
            rows.append(
                {
                    "batch": batch,
                    "patch": patch,
                    "device": dev,
                    "device_mpix_per_s": dev["mpix_per_s"],
                    "cpu_pool_mpix_per_s": cpu_mpix,
                    "speedup": significant(dev["mpix_per_s"] / cpu_mpix) if cpu_mpix else None,
                }
            )
    return {
        "mix": "training default, no curriculum (noise and/or JPEG, 20% double JPEG, 4:2:0/4:2:2/4:4:4)",
        "cpu_workers": workers,
        "cpu_pool": {str(p): b for p, b in baselines.items()},
        "rows": rows,
        "skipped": skipped,
    }


def markdown(section: dict) -> str:
    lines = ["| batch | patch px | device MPix/s | CPU pool MPix/s | device / CPU pool |", "|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r['batch']} | {r['patch']} | {r['device_mpix_per_s']:.2f} | {r['cpu_pool_mpix_per_s']:.2f} | "
        f"{r['speedup']:.2f}x |"
        for r in section["rows"]
    ]
    lines += [f"| - | {s['patch']} | skipped: {s['reason']} | | |" for s in section["skipped"]]
    return "\n".join(lines)
