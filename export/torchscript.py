"""TorchScript export: `torch.jit.trace` at one size, saved with `torch.jit.save`, verified at other sizes.

Tracing (not scripting: NAFNet's forward uses Python iterators TorchScript cannot compile) records the padding
arithmetic on the input's shape as graph operations, so one trace serves every batch size, height and width; the
parity check proves it by running the saved file at sizes other than the traced one. The file carries
`metadata.json` (model name, kwargs, step, stride, inputs) as a TorchScript extra file:
`torch.jit.load(path, _extra_files={"metadata.json": ""})` reads it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from export.parity import (
    PARITY_SHAPE,
    SECOND_SHAPE,
    ExportError,
    Source,
    check_parity,
    metadata,
    parity_inputs,
    reference,
    staged,
)

SUFFIXES = (".ts", ".pt")  # .ts is the documented one; .pt is accepted for tools that expect it
TRACE_SHAPE = (1, 3, 64, 64)
TOLERANCE = 1e-5  # the same kernels run: differences are float reordering at most


def export_torchscript(
    source: Source, out: str | os.PathLike, *, conditioned: bool = False, tolerance: float = TOLERANCE
) -> float:
    """Trace `source.model` (with a `condition` input when `conditioned`), save it to `out`, check parity.

    Returns the worst max abs difference against eager PyTorch over the two parity sizes.
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ExportError(f"TorchScript files end in {' or '.join(SUFFIXES)}, got {out.name}")
    if conditioned and not source.conditionable:
        raise ExportError(f"{source.path} is a blind model: --conditioned needs a model built with conditioned=True")
    example = parity_inputs(TRACE_SHAPE, conditioned, seed=1)
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(source.model, example)
    props = metadata(source, conditioned=conditioned, exporter=f"torch.jit.trace at {TRACE_SHAPE}")
    with staged(out) as partial:
        torch.jit.save(traced, str(partial), _extra_files={"metadata.json": json.dumps(props, indent=2)})
        loaded = torch.jit.load(str(partial), map_location="cpu")
        worst = 0.0
        for shape in (PARITY_SHAPE, SECOND_SHAPE):
            inputs = parity_inputs(shape, conditioned)
            with torch.no_grad():
                restored = loaded(*inputs)
            worst = max(worst, check_parity("torchscript", restored, reference(source, inputs), tolerance))
    return worst


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata a TorchScript file written here carries (empty for files written elsewhere)."""
    extra = {"metadata.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
