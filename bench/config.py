"""How much `bench.suite` measures: points of each curve, repeats, steps. Sized per device and for `--quick`.

The curves vary one setting around the device's default training config (`train.config.default_config`):
batch 8 of 96 px with 1 worker on a CPU, batch 32 of 128 px with min(8, cores) workers on a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteConfig:
    quick: bool
    repeats: int  # timed calls per measurement, after one warm-up call; the median is reported
    loader_steps: int  # batches per timed loader call
    stage_limit: int  # images decoded for the per-stage timings and as the degradation's patch source
    degrade_batches: tuple[int, ...]
    degrade_patches: tuple[int, ...]
    curve_workers: tuple[int, ...]
    curve_batches: tuple[int, ...]
    curve_patches: tuple[int, ...]
    train_step_steps: int  # training steps per timed call on the curves
    train_steps: int  # steps of each real training run (data stall)
    train_log_every: int  # metrics window; the first window (start-up) is reported apart
    backends: tuple[str, ...] = ("torch", "dali")
    train_sets: tuple[str, ...] = ()  # extra `--set` overrides for every training config (tests: a tiny model)
    synth_count: int = 240  # images generated when no --shards is given
    infer_args: tuple[str, ...] = ()  # arguments of `python -m bench.infer` (its --device and --out are the suite's)
    infer_timeout_s: int = 600
    call_s: float = 0.25  # target seconds per timed call where the work per call is chosen (degradation)


# Sizes per (device kind, quick). `curve_workers` lists candidates; those above the machine's cores are dropped.
PRESETS: dict[tuple[str, bool], dict] = {
    ("cpu", True): {
        "repeats": 3,
        "loader_steps": 8,
        "stage_limit": 16,
        "degrade_batches": (8, 32),
        "degrade_patches": (64, 96, 128),
        "curve_workers": (1, 2),
        "curve_batches": (2, 4, 8),
        "curve_patches": (32, 64, 96),
        "train_step_steps": 1,
        "train_steps": 8,
        "train_log_every": 4,
        "synth_count": 32,
        "infer_args": ("--quick", "--sizes", "256"),
        "infer_timeout_s": 150,
    },
    ("cpu", False): {
        "repeats": 5,
        "loader_steps": 16,
        "stage_limit": 64,
        "degrade_batches": (8, 32, 128),
        "degrade_patches": (64, 96, 128, 256),
        "curve_workers": (1, 2, 4, 8),
        "curve_batches": (4, 8, 16, 32),
        "curve_patches": (64, 96, 128, 192),
        "train_step_steps": 2,
        "train_steps": 150,
        "train_log_every": 25,
    },
    ("gpu", True): {
        "repeats": 3,
        "loader_steps": 16,
        "stage_limit": 32,
        "degrade_batches": (8, 32, 128),
        "degrade_patches": (64, 128, 256),
        "curve_workers": (1, 2, 4, 8, 16),
        "curve_batches": (8, 32, 128),
        "curve_patches": (64, 128, 256),
        "train_step_steps": 5,
        "train_steps": 200,
        "train_log_every": 40,
        "infer_args": ("--quick",),
        "infer_timeout_s": 300,
    },
    ("gpu", False): {
        "repeats": 5,
        "loader_steps": 32,
        "stage_limit": 64,
        "degrade_batches": (8, 32, 128, 512),
        "degrade_patches": (64, 128, 256),
        "curve_workers": (1, 2, 4, 8, 16),
        "curve_batches": (8, 16, 32, 64, 128),
        "curve_patches": (64, 96, 128, 192, 256),
        "train_step_steps": 10,
        "train_steps": 500,
        "train_log_every": 50,
    },
}


def suite_config(device_type: str, quick: bool) -> SuiteConfig:
    """The suite's sizes for a device type ("cpu", "cuda", "mps").

    The CPU `--quick` curves stop at the default batch and patch (a CPU training step is the slow part), so the
    whole suite takes a few minutes on 2 cores even while another job shares them.
    """
    preset = dict(PRESETS[("cpu" if device_type == "cpu" else "gpu", quick)])
    cores = os.cpu_count() or 1
    preset["curve_workers"] = tuple(w for w in preset["curve_workers"] if w <= cores) or preset["curve_workers"][:1]
    return SuiteConfig(quick=quick, **preset)
