"""`make_loader`: the one entry point to training data; picks the DALI or torch backend.

Contract (produced here): an infinite iterator of `clean` batches, (N, 3, P, P) float32 RGB
in [0, 1] on `device`, N = `cfg.batch_size`, P = `cfg.patch_size`. Both backends yield exactly this, so the
trainer cannot tell them apart; it counts iterations, never epochs. Damaged shards and samples are left out and
counted, and the run stops only past `cfg.max_bad_share` (`pipeline.health`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch

from pipeline.config import LoaderConfig
from pipeline.health import SkipCounter, check_shards, warn
from pipeline.loader_dali import dali_loader
from pipeline.loader_torch import torch_loader
from pipeline.shard_format import Manifest, read_manifest, split_shards
from pipeline.stream import build_index

BACKENDS = ("auto", "torch", "dali")


def dali_available() -> bool:
    """True when NVIDIA DALI is installed (without importing it: the import takes seconds)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def resolve_backend(backend: str) -> str:
    """`auto` -> `dali` when DALI is installed and CUDA is present, else `torch`; others pass through."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader.backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "dali" if dali_available() and torch.cuda.is_available() else "torch"
    if backend == "dali" and not dali_available():
        raise ImportError("loader.backend=dali needs NVIDIA DALI: `pip install -e .[dali]`, or use backend=torch")
    return backend


def check_config(manifest: Manifest, split: str, cfg: LoaderConfig) -> None:
    """Refuse at start what would fail (or silently go wrong) in the middle of training."""
    if cfg.patch_size < 1 or cfg.batch_size < 1 or cfg.crops_per_image < 1:
        raise ValueError(
            f"loader.patch_size ({cfg.patch_size}), batch_size ({cfg.batch_size}) and crops_per_image "
            f"({cfg.crops_per_image}) must all be >= 1"
        )
    stats = manifest["splits"][split]
    width, height = stats["min_width"], stats["min_height"]
    if min(width, height) < cfg.patch_size:
        raise ValueError(
            f"the '{split}' split has images as small as {width}x{height} px (min width x min height), smaller "
            f"than loader.patch_size={cfg.patch_size}: lower the patch size or repack with "
            f"`python -m shards.pack --min-side {cfg.patch_size}`"
        )


def make_loader(
    shards_dir: str | Path,
    split: str,
    cfg: LoaderConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> Iterator[torch.Tensor]:
    """Infinite iterator of `clean` (N, 3, P, P) float32 RGB batches in [0, 1] on `device`, from step `start_step`.

    The batch at step k is a pure function of (seed, rank, k) (`pipeline.stream`): a loader started at k yields what
    one started at 0 yields k batches later, and reads only one step group of images first. Every rank passes its own
    `rank` of `world_size`: the ranks of one step read disjoint samples.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    device = torch.device(device)
    folder = Path(shards_dir)
    manifest = read_manifest(folder)
    split_shards(folder, split)  # a clear error when the split has no shards
    check_config(manifest, split, cfg)
    entries = [entry for entry in manifest["shards"] if entry["split"] == split]
    usable, lost, why = check_shards(folder, entries, cfg.max_bad_share)  # missing or truncated tars: left out, named
    index, broken = build_index([folder / entry["name"] for entry in usable], [entry["samples"] for entry in usable])
    for shard, missing, error in broken:  # a damaged tar header hides the members after it
        why = f"{shard.name}: {missing} of its samples unread: {error}"
        warn(f"shard {why}")
        lost += missing
    total = sum(entry["samples"] for entry in entries)
    counter = SkipCounter(folder, total, cfg.max_bad_share, lost, why)
    counter.check()
    if resolve_backend(cfg.backend) == "dali":
        return dali_loader(index, cfg, device, rank, world_size, start_step)
    return torch_loader(index, cfg, device, rank, world_size, counter, start_step)
