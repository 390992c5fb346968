"""Distributed data parallel (DDP) plumbing: one training process per device, started by `torchrun`.

`init` starts the process group when torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) are set, NCCL on CUDA
and gloo otherwise, and does nothing for a plain `python train/run.py`. `current()` describes the group wherever it
was started (torchrun, or a test that called `init`). Small control messages (the per-step stop flag, RNG states
for a checkpoint, "is this the best model") travel through a gloo group on the CPU, so asking "did any rank get a
signal?" at every step never waits for the GPU. Every helper is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RANK_SEED_STRIDE = 1_000_003  # rank r seeds with seed + r * stride: rank 0 keeps the single-process seed
_control_group: list[Any] = []  # the gloo group for control messages when the default group is NCCL


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: global `rank` of `world_size`, `local_rank` of `local_world_size` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints; the others only train."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when all of torchrun's variables are set; a partial set is a broken launch, refused with the names."""
    present = [name for name in TORCHRUN_VARS if name in os.environ]
    if present and len(present) < len(TORCHRUN_VARS):
        missing = sorted(set(TORCHRUN_VARS) - set(present))
        raise RuntimeError(f"{', '.join(present)} set but not {', '.join(missing)}: start DDP runs with torchrun")
    return bool(present)


def world_size_from_env() -> int:
    """The number of ranks torchrun asks for (1 for a plain `python` start), known before `init`."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def init(device_type: str, timeout_min: float = 30.0) -> DistEnv:
    """Join the process group torchrun set up (NCCL for `device_type` cuda, gloo for cpu); single process otherwise.

    On CUDA each process takes GPU `LOCAL_RANK`. `timeout_min` bounds any collective, e.g. other ranks waiting for
    rank 0's validation, so a dead peer ends the run instead of hanging it.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return current()
    if device_type not in ("cuda", "cpu"):
        raise RuntimeError(f"DDP runs on CUDA (NCCL) or the CPU (gloo), not {device_type}: set run.device=cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                f"use torchrun --nproc_per_node {torch.cuda.device_count()} (one process per GPU)"
            )
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(minutes=timeout_min)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    if device_type == "cuda":
        _control_group.append(dist.new_group(backend="gloo", timeout=timeout))
    return current()


def current() -> DistEnv:
    """This process's place in the initialised group; rank 0 of 1 when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistEnv(rank, world_size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def shutdown(env: DistEnv, clean: bool) -> None:
    """Leave the group; after a clean run first wait for every rank (rank 0 may still be writing a checkpoint)."""
    if not dist.is_initialized():
        return
    if clean and env.world_size > 1:
        barrier(env)
    dist.destroy_process_group()
    _control_group.clear()


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """CUDA processes each own GPU `local_rank`; CPU processes share the CPU."""
    return torch.device("cuda", env.local_rank) if device.type == "cuda" else device


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s degradation generator: different per rank, fixed by (seed, rank)."""
    return seed + rank * RANK_SEED_STRIDE


def wrap(model: torch.nn.Module, device: torch.device, env: DistEnv) -> torch.nn.Module:
    """DDP around `model` when there are several ranks (it broadcasts rank 0's weights now, averages gradients in
    `backward`); the model itself for one process."""
    if env.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _control() -> Any:
    return _control_group[0] if _control_group else None


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when `flag` is true on at least one (a stop signal, a non-finite loss)."""
    if env.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control())
    return bool(value.item())


def mean_over_ranks(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of `tensor` over all ranks (on its device; gloo has no AVG, so a sum divided by the world size)."""
    if env.world_size == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / env.world_size


def gather_to_main(obj: Any, env: DistEnv) -> list[Any] | None:
    """Every rank's `obj` (picklable, CPU tensors) as a list on rank 0, in rank order; None on the other ranks."""
    if env.world_size == 1:
        return [obj]
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, gathered, dst=0, group=_control())
    return gathered


def from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank (the others pass anything, e.g. None); they wait here while rank 0 works."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control())
    return box[0]


def all_values(value: Any, env: DistEnv) -> list[Any]:
    """`value` from every rank, in rank order, on every rank."""
    if env.world_size == 1:
        return [value]
    values = [None] * env.world_size
    dist.all_gather_object(values, value, group=_control())
    return values


def check_same_step(step: int, env: DistEnv) -> None:
    """All ranks must start from the same step (a resumed checkpoint that every node can read)."""
    steps = all_values(step, env)
    if len(set(steps)) > 1:
        raise RuntimeError(
            f"ranks start at different steps {steps}: every node must see the same RUN_DIR/last.pt "
            f"(put --out on a shared filesystem, or pass the same --resume PATH to all)"
        )


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier(group=_control())
