"""The one device resolver every command uses (train, evaluate, infer, demo, export, bench): one set of names and
messages. `auto` picks CUDA, then MPS, then the CPU; an explicit device must exist here or it fails at once."""

from __future__ import annotations

import torch

ASK_INSTEAD = "ask for cpu or auto instead (--device, or run.device for the trainer)"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is not available fails with a clear message."""
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was asked for but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); {ASK_INSTEAD}"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    elif chosen.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} was asked for but MPS (Apple GPU) is not available here; {ASK_INSTEAD}")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return chosen


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
