"""Memory: how much memory is free there, how much a model needs per pixel.

`tiling.restore` uses these to decide between whole-image and tiled inference when the caller names no tile size.
Free memory: CUDA from `torch.cuda.mem_get_info` (plus what torch's cache holds but does not use); CPU from
`MemAvailable` in /proc/meminfo (or `os.sysconf`), capped by a cgroup v2 limit when there is one; MPS from
`torch.mps.recommended_max_memory`. A model's activation bytes per pixel are measured once per backend on a probe
image: the peak of torch's allocator (CUDA), the device-wide drop in free memory (CUDA, for onnxruntime / TensorRT
allocations), or the process's peak resident memory (Linux CPU, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

PROBE_SIDE_PX = 512  # side of the probe image (rounded up to the model's stride): large enough that what a runtime
# allocates once per new input size (OpenVINO compiles for it: ~50 MB) weighs little per pixel
FALLBACK_BYTES_PER_PIXEL = 4096.0  # when nothing can be measured: ~3x what the shipped NAFNet needs on a CPU
SAFETY_FACTOR = 1.5  # measured peaks vary with the allocator's state and the convolution algorithms picked
USABLE_SHARE = {"cuda": 0.8, "mps": 0.5, "cpu": 0.5}  # of the free memory, leaving room for the rest of the system


class Runnable(Protocol):
    device: torch.device
    stride: int

    def __call__(self, degraded: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor: ...


def free_bytes(device: torch.device) -> int:
    """Memory that inference may use on `device` now: the free memory times a share left for everything else."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        available = free + cached
    elif device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", lambda: 0)()
        available = recommended - torch.mps.driver_allocated_memory() if recommended else _cpu_available_bytes()
    else:
        available = _cpu_available_bytes()
    return int(max(available, 0) * USABLE_SHARE.get(device.type, 0.5))


def _cpu_available_bytes() -> int:
    """MemAvailable (Linux) or free physical pages, capped by the cgroup v2 memory limit of this process."""
    available = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, current = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        if limit.read_text().strip() != "max":
            available = min(available, int(limit.read_text()) - int(current.read_text()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: MemAvailable stands
    return available


def bytes_per_pixel(backend: Runnable) -> float:
    """Peak activation memory of one forward pass per input pixel (batch 1), measured once and kept on the backend.

    The figure includes a safety factor; it falls back to `FALLBACK_BYTES_PER_PIXEL` where nothing is measurable.
    """
    cached = getattr(backend, "_bytes_per_pixel", None)
    if cached is not None:
        return cached
    side = -(-PROBE_SIDE_PX // backend.stride) * backend.stride
    height, width = getattr(backend, "fixed_hw", None) or (side, side)  # a file of one input size: that size
    probe = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    backend(probe[:, :, : backend.stride * 2, : backend.stride * 2] if (height, width) == (side, side) else probe)
    peak = _measure_peak_bytes(backend, probe)  # after a warm-up: lazy initialisation, kernel selection
    measured = peak / (height * width) * SAFETY_FACTOR if peak and peak > 0 else FALLBACK_BYTES_PER_PIXEL
    backend._bytes_per_pixel = measured  # type: ignore[attr-defined]
    return measured


def _measure_peak_bytes(backend: Runnable, probe: torch.Tensor) -> int | None:
    device = backend.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated, (free_before, _) = torch.cuda.memory_allocated(device), torch.cuda.mem_get_info(device)
        backend(probe)
        torch.cuda.synchronize(device)
        torch_peak = torch.cuda.max_memory_allocated(device) - allocated
        return max(torch_peak, free_before - torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        before = torch.mps.driver_allocated_memory()
        backend(probe)
        torch.mps.synchronize()
        return torch.mps.driver_allocated_memory() - before  # the MPS cache keeps its peak allocation
    return _cpu_peak_rss(lambda: backend(probe))


def _cpu_peak_rss(run) -> int | None:
    """Rise of this process's peak resident memory while `run()` runs (Linux only; None elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = _proc_status_kb("VmRSS")
        run()
        return (_proc_status_kb("VmHWM") - before) * 1024
    except (OSError, ValueError):
        return None


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} not in /proc/self/status")
