"""One factory for every model file: `open_backend(path, device, precision, runtime)` -> a `Backend`; no path: the
shipped model on the fastest runtime available (`open_shipped`).

The file decides the backend: a project checkpoint (`.pt` / `.pth`, rebuilt by `model.load_model`) or a TorchScript
archive (`.ts`, or a `.pt` / `.pth` with TorchScript's zip layout): `infer.backend_torch`; ONNX (`.onnx`):
onnxruntime (`infer.backend_onnx`) or OpenVINO (`infer.backend_openvino`); a TensorRT engine (`.engine` / `.plan`):
`infer.backend_tensorrt`. MPS always runs fp32 (fp16 gives black images there).

The shipped model (`model.SHIPPED_MODEL`) runs through the first usable runtime of `FASTEST` for the device
(`python -m bench infer` measures them, docs/infer.md): on a CPU OpenVINO, then onnxruntime, both reading the ONNX
export next to the checkpoint (`shipped_onnx()`), then eager PyTorch. The ONNX file stands in only when it was
exported from that very checkpoint, with the pooled I/O tiling needs and the condition input when the checkpoint
has the strength control; otherwise the next runtime is taken and a note names the command that rewrites the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path

import torch

import model as model_api
from infer.backend_base import DEFAULT_STRIDE, PRECISIONS, Backend, cpu_threads, set_cpu_threads
from infer.backend_tensorrt import EngineBackend
from infer.backend_torch import TorchBackend
from pipeline.device import resolve_device

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ts", ".jit")
ENGINE_SUFFIXES = (".engine", ".plan")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
FASTEST = {"cpu": ("openvino", "onnxruntime", "torch"), "cuda": ("torch",), "mps": ("torch",)}
EXPORT_COMMAND = "python -m export onnx --model {checkpoint} --out {onnx}"

__all__ = ["PRECISIONS", "RUNTIMES", "Backend", "cpu_threads", "open_backend", "open_shipped", "set_cpu_threads"]


def open_backend(
    path: str | Path | None, device: str = "auto", precision: str = "fp32", runtime: str = "auto"
) -> Backend:
    """Open a model file on `device` (auto: CUDA, MPS, CPU) in `precision`. None = the shipped model through the
    fastest runtime here (`open_shipped`); an ONNX file runs with `runtime` (auto = onnxruntime)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if path is None:
        return open_shipped(device, precision, runtime)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    torch_device = resolve_device(device)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return open_onnx(path, torch_device, precision, runtime)
    if suffix in ENGINE_SUFFIXES:
        return EngineBackend(path, torch_device)
    if suffix not in CHECKPOINT_SUFFIXES and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path.name}: unknown model file type; expected a checkpoint (.pt/.pth), TorchScript (.ts), "
            f"ONNX (.onnx) or a TensorRT engine (.engine/.plan)"
        )
    if is_torchscript(path):
        extra = {"metadata.json": ""}  # written by export.torchscript: stride, conditioned, ...
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        metadata = json.loads(extra["metadata.json"]) if extra["metadata.json"] else {}
        conditioned = len(module.forward.schema.arguments) > 2  # self, degraded[, condition]
        stride = int(metadata.get("stride", getattr(module, "stride", DEFAULT_STRIDE)))
        return TorchBackend(module, f"torchscript:{path.name}", torch_device, precision, stride, conditioned)
    if runtime not in ("auto", "torch"):
        raise ValueError(f"{path.name} is a PyTorch file: it runs with --runtime torch, not {runtime}")
    module = model_api.load_model(path)
    conditioned = model_api.is_conditioned(module)
    return TorchBackend(module, f"checkpoint:{path.name}", torch_device, precision, module.stride, conditioned)


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive: a zip with `code/` and `constants.pkl` (a `torch.save` zip has neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def shipped_onnx() -> Path:
    """The ONNX export that stands in for the shipped checkpoint: the same name, `.onnx`."""
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
    if json.loads(metadata.get("model_kwargs", "{}")).get("conditioned") and metadata.get("conditioned") != "True":
        return f"{runtime}: {path.name} has no strength control (rewrite it with `{command}`)"
    return None


def open_onnx(path: Path, device: torch.device, precision: str, runtime: str = "auto") -> Backend:
    """An ONNX file through onnxruntime (`runtime` auto or onnxruntime) or OpenVINO (CPU only)."""
    if runtime in ("auto", "onnxruntime"):
        from infer.backend_onnx import OnnxBackend  # onnxruntime is imported only for ONNX files

        return OnnxBackend(path, device, precision)
    if runtime != "openvino":
        raise ValueError(f"{path.name} is an ONNX file: it runs with --runtime onnxruntime or openvino, not {runtime}")
    if device.type != "cpu":
        raise ValueError(f"OpenVINO runs here on the CPU only, not on {device}")
    from infer.backend_openvino import OpenVinoBackend

    return OpenVinoBackend(path, precision)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as `export.parity` records its source checkpoint's."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
