"""Which runtime runs the shipped model: `open_shipped(device, precision, runtime)`, and ONNX files' runtimes.

With no model named, `infer` and `demo` take the shipped weights (`model.SHIPPED_MODEL`) through the fastest
runtime available on the device, in the order `FASTEST` gives (measured with `python -m bench infer`, docs/infer.md):
on a CPU, OpenVINO, then onnxruntime, both reading the ONNX export next to the checkpoint (`shipped_onnx()`), then
eager PyTorch. An ONNX file is used only when it was exported from the very checkpoint (its `source_sha256`
metadata) with the pooled I/O that tiling needs; otherwise the next runtime is taken and a note says why and which
command rewrites the file. `backend.chosen` says what was chosen, in words.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch

import model as model_api
from infer.backends import Backend, open_backend
from pipeline.device import resolve_device

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
FASTEST = {"cpu": ("openvino", "onnxruntime", "torch"), "cuda": ("torch",), "mps": ("torch",)}
EXPORT_COMMAND = "python -m export onnx --model {checkpoint} --out {onnx}"


def shipped_onnx() -> Path:
    return Path(model_api.SHIPPED_MODEL).with_suffix(".onnx")


def open_shipped(device: str = "auto", precision: str = "fp32", runtime: str = "auto") -> Backend:
    """The shipped model on `device` through `runtime` (auto: the first usable one of `FASTEST`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    torch_device = resolve_device(device)
    order = FASTEST.get(torch_device.type, ("torch",)) if runtime == "auto" else (runtime,)
    skipped = []
    for name in order:
        problem = None if name == "torch" else onnx_problem(shipped_onnx(), name)
        if problem is not None:
            if runtime != "auto":
                raise ValueError(problem)
            skipped.append(problem)
            continue
        checkpoint = Path(model_api.SHIPPED_MODEL)
        path = checkpoint if name == "torch" else shipped_onnx()
        backend = open_backend(path, device, precision, name)
        why = "the fastest runtime available here" if runtime == "auto" else "--runtime"
        backend.chosen = f"{name} ({why}; {path.name})"
        backend.notes.extend(f"not {problem}" for problem in skipped)
        return backend
    raise RuntimeError("no runtime can run the shipped model: " + "; ".join(skipped))


def onnx_problem(path: Path, runtime: str) -> str | None:
    """Why the shipped ONNX file cannot stand in for the checkpoint with `runtime`, or None when it can."""
    command = EXPORT_COMMAND.format(checkpoint=_relative(model_api.SHIPPED_MODEL), onnx=_relative(path))
    package = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    if importlib.util.find_spec(package) is None:
        return f"{runtime}: the {package} package is not installed"
    if not path.is_file():
        return f"{runtime}: {path.name} is missing (write it with `{command}`)"
    from export.onnx import read_metadata

    metadata = read_metadata(path)
    if metadata.get("source_sha256") != file_sha256(model_api.SHIPPED_MODEL):
        return f"{runtime}: {path.name} was not exported from the shipped checkpoint (rewrite it with `{command}`)"
    if metadata.get("pooled_io") != "1":
        return f"{runtime}: {path.name} has no pooled I/O for tiling (rewrite it with `{command}`)"
    return None


def open_onnx(path: Path, device: torch.device, precision: str, runtime: str = "auto") -> Backend:
    """An ONNX file through onnxruntime (`runtime` auto or onnxruntime) or OpenVINO (CPU only)."""
    if runtime in ("auto", "onnxruntime"):
        from infer.backend_onnx import OnnxBackend

        return OnnxBackend(path, device, precision)
    if runtime != "openvino":
        raise ValueError(f"{path.name} is an ONNX file: it runs with --runtime onnxruntime or openvino, not {runtime}")
    if device.type != "cpu":
        raise ValueError(f"OpenVINO runs here on the CPU only, not on {device}")
    from infer.backend_openvino import OpenVinoBackend

    return OpenVinoBackend(path, precision)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
