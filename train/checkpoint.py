"""Atomic checkpoints with everything an exact resume needs, loaded back with `weights_only=True`.

One dict per file: `model`, `model_name`, `model_kwargs`, `ema`, `ema_n_averaged`, `optimizer`, `scaler`, `step`,
`config`, `rng` (torch CPU/CUDA states, the degradation generator, numpy and Python `random`), `best_psnr`. The
learning rate is a pure function of the step (`train.loop.lr_at`), so there is no scheduler state to keep.
Model weights are saved unwrapped (no `module.` or `_orig_mod.` prefixes), so `model.load_model` reads them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `atomic_save`; untrusted files cannot run code (weights_only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
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
    """`auto` -> RUN_DIR/last.pt when it exists (else a fresh start); a path must exist; None -> fresh start."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return path
