"""What every exporter shares: the model being exported (`Source`), its metadata, and the parity check.

Parity runs the exported file and eager PyTorch on the same input of `PARITY_SHAPE`, whose height and width are not
multiples of any model stride (so the padding path is exercised), and fails above a tolerance. Files are written
under a temporary name and renamed only after they pass, so a failed export never replaces a good file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.checks import output_problem
from model import is_conditioned, load_model, read_checkpoint, select_state, unwrap
from model.condition import encode_condition

PARITY_SHAPE = (1, 3, 67, 93)  # odd height and width: never a multiple of the stride
SECOND_SHAPE = (2, 3, 45, 71)  # another batch and size, for graphs exported with dynamic axes


class ExportError(RuntimeError):
    """An export that cannot be done or did not pass its checks; the message says why (the CLI prints it)."""


@dataclass
class Source:
    """A loaded checkpoint: the eval-mode model and what the exported files record about it."""

    model: nn.Module
    path: Path
    name: str
    kwargs: dict[str, Any]
    step: int | None

    @property
    def stride(self) -> int:
        return int(getattr(unwrap(self.model), "stride", 1))

    @property
    def conditionable(self) -> bool:
        """True when the model accepts a `condition` (a FiLM-conditioned NAFNet)."""
        return is_conditioned(self.model)


def load_source(path: str | os.PathLike) -> Source:
    """Load a checkpoint for export; any unreadable or unfit file raises `ExportError` naming the file and cause."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no checkpoint at {path}")
    try:
        model = load_model(path)
        checkpoint = read_checkpoint(path)
        _, name, kwargs = select_state(checkpoint, use_ema=True)
    except ValueError as err:  # load_model's own explanations (unfit weights, damage, ONNX, unsafe pickle)
        raise ExportError(f"cannot load a model from {path}: {err}") from err
    except Exception as err:  # torch.load of a damaged file raises many types (IndexError, struct.error, ...)
        raise ExportError(
            f"cannot load a model from {path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    step = checkpoint.get("step") if isinstance(checkpoint, dict) else None
    return Source(model.float().eval(), path, name or type(model).__name__.lower(), dict(kwargs or {}), step)


def metadata(source: Source, **extra: Any) -> dict[str, str]:
    """String key/values stored in exported files (ONNX metadata_props, TorchScript extra files, engine sidecars)."""
    props = {
        "model_name": source.name,
        "model_kwargs": json.dumps(source.kwargs, sort_keys=True),
        "step": "" if source.step is None else str(source.step),
        "stride": str(source.stride),
        "source_checkpoint": source.path.name,
        "source_sha256": _sha256(source.path),  # infer.backends: was the file exported from today's checkpoint
        "torch_version": torch.__version__,
        "io": "degraded: (N, 3, H, W) float32 RGB in [0, 1] -> restored: same shape; condition: (N, 4) float32",
    }
    props.update({key: str(value) for key, value in extra.items()})
    return props


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def parity_inputs(shape: tuple[int, ...], conditioned: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic `(degraded,)` or `(degraded, condition)` for a parity check; the condition asks for sigma 25,
    quality 40 (a mid-strength request, so the FiLM path is exercised with non-zero values)."""
    generator = torch.Generator().manual_seed(seed)
    degraded = torch.rand(shape, generator=generator)  # (N, 3, H, W)
    if not conditioned:
        return (degraded,)
    return degraded, encode_condition(shape[0], sigma_255=25.0, quality=40.0)


def reference(source: Source, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Eager float32 output on the CPU for the parity inputs."""
    with torch.inference_mode():
        return source.model(*inputs)


def check_parity(what: str, restored: torch.Tensor, expected: torch.Tensor, tolerance: float) -> float:
    """Print and return the max abs difference; raise `ExportError` above `tolerance` or on a bad output."""
    shape = "x".join(map(str, expected.shape))
    if restored.shape != expected.shape:
        raise ExportError(f"{what}: output shape {tuple(restored.shape)} != eager {tuple(expected.shape)}")
    problem = output_problem(restored.float())
    if problem is not None:
        raise ExportError(f"{what}: output on a {shape} input has a problem: {problem}")
    diff = (restored.float() - expected.float()).abs().max().item()
    print(f"parity {what} on {shape}: max abs diff {diff:.3g} (tolerance {tolerance:g})")
    if diff > tolerance:
        raise ExportError(f"{what}: max abs diff {diff:.3g} against eager PyTorch exceeds the tolerance {tolerance:g}")
    return diff


@contextmanager
def staged(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `out` (same suffix); rename it to `out` if the block succeeds, else delete it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")
    try:
        yield partial
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
