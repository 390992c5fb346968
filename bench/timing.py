"""Clock discipline shared by the benchmarks: warm up, synchronise the device before each clock read, take medians.

Every timed figure in bench/ comes from `measure`: one untimed warm-up call (compilation, allocator, worker start-up),
then `repeats` timed calls, each bracketed by a device synchronisation, so asynchronous CUDA/MPS work is counted in
the call that queued it. The median is reported (robust to a noisy, shared machine) together with the raw times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued work on `device` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def repeat_times(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` timed calls of `fn`, after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(
    fn: Callable[[], object], items: int, repeats: int, device: torch.device, pixels_per_item: float, warmup: int = 1
) -> dict:
    """Time `fn` (which processes `items` images of `pixels_per_item` pixels each) -> rates from the median call."""
    times = repeat_times(fn, repeats, device, warmup)
    median_s = statistics.median(times)
    return {
        "img_per_s": significant(items / median_s),
        "mpix_per_s": significant(items * pixels_per_item / median_s / 1e6),
        "median_s": significant(median_s, 7),
        "times_s": [significant(t, 7) for t in times],
        "items": items,
    }


def significant(value: float, digits: int = 5) -> float:
    """`value` rounded to `digits` significant digits (rates span 0.01 to 1e6: fixed decimals would lose them)."""
    return float(f"{value:.{digits}g}")


def median_rate(fn: Callable[[], object], items: int, repeats: int, device: torch.device) -> float:
    """Items per second: median over `repeats` timed calls of `fn`, after one warm-up call."""
    return items / statistics.median(repeat_times(fn, repeats, device))
