"""Atomic checkpoints with everything an exact resume needs, loaded back with `weights_only=True`.

One dict per file: `model`, `model_name`, `model_kwargs`, `ema`, `ema_n_averaged`, `optimizer`, `scaler`, `step`,
`config`, `rng` (torch CPU/CUDA states, the degradation generator, numpy and Python `random`), `best_psnr`,
`world_size` and `rng_per_rank` (every rank's `rng`, gathered to rank 0, which alone writes the file). The
learning rate is a pure function of the step (`train.step.lr_at`), so there is no scheduler state to keep.
Model weights are saved unwrapped (no `module.` or `_orig_mod.` prefixes), so `model.load_model` reads them.
Every file carries the checksum of its tensors (`model.files`), checked on load. Writing `last.pt` first keeps the
file it replaces as `last.prev.pt`, so a damaged `last.pt` (a bad disk, a copy cut short) still leaves a run to
resume: `resolve_resume("auto", ...)` falls back to it and says so.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import torch

from model import model_state, unwrap
from model.files import CheckpointError, read_checkpoint, with_checksum
from train.config import TrainConfig, to_dict
from train.distributed import gather_to_main

if TYPE_CHECKING:
    from train.state import State


class RngState(TypedDict, total=False):
    """One rank's random states: torch CPU, the degradation generator, numpy, Python `random`, CUDA when present."""

    torch: torch.Tensor
    generator: torch.Tensor
    numpy: list[Any]  # np.random.get_state() with the key array as an int64 tensor
    python: list[Any]
    cuda: list[torch.Tensor]


class TrainCheckpoint(TypedDict, total=False):
    """One checkpoint file (the module docstring); older files may lack `world_size` and `rng_per_rank`."""

    model: dict[str, torch.Tensor]
    model_name: str
    model_kwargs: dict[str, Any]
    ema: dict[str, torch.Tensor] | None
    ema_n_averaged: int
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    step: int
    best_psnr: float
    config: dict[str, Any]  # train.config.to_dict of the run's TrainConfig
    device_type: str
    world_size: int
    rng: RngState
    rng_per_rank: list[RngState]


def save(state: State, cfg: TrainConfig, path: Path) -> None:
    """Checkpoint `state` atomically. Every rank calls it (their RNG states are gathered) and rank 0 writes.
    Refuses (raises, on every rank: DDP keeps the weights equal) when a weight is NaN/inf, so a good file is never
    replaced."""
    finite = torch.stack([p.detach().isfinite().all() for p in state.model.parameters()]).all()
    if not bool(finite):
        raise FloatingPointError(f"weights are not finite at step {state.step}: not overwriting {path.name}")
    rngs = gather_to_main(rng_state(state.generator), state.env)
    if not state.env.is_main or rngs is None:
        return
    checkpoint = TrainCheckpoint(
        model=model_state(state.model),
        model_name=cfg.model.name,
        model_kwargs=dict(cfg.model.kwargs),
        ema=model_state(state.ema.module) if state.ema is not None else None,
        ema_n_averaged=state.ema.n_averaged if state.ema is not None else 0,
        optimizer=state.optimizer.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        step=state.step,
        best_psnr=state.best_psnr,
        config=to_dict(cfg),
        device_type=state.generator.device.type,
        world_size=state.env.world_size,
        rng=rngs[0],
        rng_per_rank=rngs,
    )
    atomic_save(with_checksum(dict(checkpoint)), path, keep_previous=path.name == "last.pt")


def previous_path(path: Path) -> Path:
    """Where the file `path` replaced is kept: `last.pt` -> `last.prev.pt`."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def restore(state: State, path: Path) -> RngState:
    """Load weights, optimizer and counters from `path`; returns this rank's saved RNG states (set them once the
    loader is built at the saved step). Refuses a checkpoint of another device type or another number of ranks."""
    saved = load(path)
    check_world_size(saved, state.env.world_size, path)
    if saved["device_type"] != state.generator.device.type:
        raise ValueError(
            f"{path} was written on {saved['device_type']}; resume it on a {saved['device_type']} device "
            f"(RNG states do not carry over), or start a new run from its weights"
        )
    unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.module.load_state_dict(saved["ema"])
        state.ema.n_averaged = saved["ema_n_averaged"]
    if state.scaler is not None and saved["scaler"] is not None:
        state.scaler.load_state_dict(saved["scaler"])
    state.step, state.best_psnr = saved["step"], saved["best_psnr"]
    return saved.get("rng_per_rank", [saved["rng"]])[state.env.rank]


def check_world_size(saved: TrainCheckpoint, world_size: int, path: str | Path) -> None:
    """A run continues exactly only with as many ranks as wrote the checkpoint (per-rank data and RNG streams)."""
    written_by = saved.get("world_size", 1)  # checkpoints from before DDP: one process
    if written_by != world_size:
        raise ValueError(
            f"{path} was written by a run of {written_by} process(es) (world size {written_by}) and this run has "
            f"{world_size}: per-rank data order and random states only continue with the same world size. Resume "
            f"with {written_by} in all (torchrun --nnodes x --nproc_per_node), or start a new run from its weights: "
            f"--set model.init={path}"
        )


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete `.NAME.tmpPID` files that `atomic_save` left when its process was killed mid-write (PID no longer
    running); returns what was removed. A temporary of a live process is kept: it is being written."""
    removed = []
    for temporary in folder.glob(".*.tmp*"):
        pid = temporary.name.rpartition(".tmp")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_save(obj: Mapping[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`; temporaries that
    killed runs left in that folder are removed first. With `keep_previous`, the file being replaced stays as
    `previous_path(path)` (a hard link: no copy, and `path` exists at every moment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            _link_previous(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def _link_previous(path: Path) -> None:
    link = path.with_name(f".{previous_path(path).name}.tmp{os.getpid()}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
        os.replace(link, previous_path(path))
    finally:
        link.unlink(missing_ok=True)


def load(path: str | Path) -> TrainCheckpoint:
    """Load a checkpoint written by `save`: untrusted files cannot run code (weights_only), a damaged one (its
    checksum differs, or torch cannot read it) raises `model.CheckpointError`."""
    return cast(TrainCheckpoint, read_checkpoint(path))


def rng_state(generator: torch.Generator) -> RngState:
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple form (numpy types it as tuple | dict)
    state: RngState = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`auto` -> RUN_DIR/last.pt when it exists (else a fresh start), or `last.prev.pt` when last.pt cannot be read
    (said on stderr); a path must exist; None -> fresh start. Temporaries of checkpoints a killed run was writing are
    removed from RUN_DIR."""
    if run_dir.is_dir():
        remove_stale_temporaries(run_dir)
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        return path
    last, previous = run_dir / "last.pt", previous_path(run_dir / "last.pt")
    if not last.is_file():
        return None
    try:
        load(last)
    except CheckpointError as err:
        if not previous.is_file():
            raise CheckpointError(
                f"--resume auto: {err}; {run_dir} holds no earlier checkpoint (last.prev.pt)"
            ) from None
        step = load(previous)["step"]
        os.replace(last, run_dir / "last.damaged.pt")  # kept for a look, and never linked over the good one
        print(
            f"warning: {err}; resuming from the one before it, {previous} (step {step}); the damaged file is now "
            "last.damaged.pt",
            file=sys.stderr,
        )
        return previous
    return last
