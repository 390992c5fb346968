"""Training precision: which autocast dtype and memory format a device gets by default, detected, never assumed.

bf16 autocast pays only where the hardware computes bf16 natively: on CUDA with bf16 support, and on a CPU with
AVX512-BF16 or AMX tiles (measured on Zen 4, release NAFNet, batch 8 of 96 px, 2 threads: fp32 0.307 MPix/s, bf16
0.363, channels_last + bf16 0.431). Elsewhere bf16 is emulated and slower than fp32 (an AVX2-only Zen 3, 1 thread:
fp32 0.11 MPix/s, bf16 0.02, channels_last + bf16 0.01), so `auto` keeps fp32 there.
"""

from __future__ import annotations

import torch

AMP_CHOICES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), as oneDNN detects it."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 on CUDA with bf16 support and on a CPU with native bf16, fp32 elsewhere (MPS included: its
    fp16 autocast is asked for explicitly); `off`, `bf16`, `fp16`: as asked."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_native_bf16() else None
    if amp not in AMP_CHOICES:
        raise ValueError(f"run.amp must be auto, off, bf16 or fp16, got '{amp}'")
    return AMP_CHOICES[amp]


def default_channels_last(device_type: str) -> bool:
    """channels_last is the default where it speeds the step up: CUDA, and a CPU with native bf16 (with fp32 on an
    AVX2 CPU it changed the step time by less than the run-to-run noise)."""
    return device_type == "cuda" or (device_type == "cpu" and cpu_native_bf16())


def describe(dtype: torch.dtype | None, device: torch.device, channels_last: bool) -> str:
    """One line for the run log: what the step computes in, and why."""
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    layout = ", channels_last" if channels_last else ""
    if device.type == "cpu":
        why = "native bf16 on this CPU" if cpu_native_bf16() else "no native bf16 on this CPU: emulated bf16 is slower"
        return f"precision {name}{layout} ({why})"
    return f"precision {name}{layout}"
