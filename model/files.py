"""Model files on disk: the checksum every file this project saves carries, and the one safe way to read them.

`with_checksum(checkpoint)` adds `CHECKSUM_KEY`: a sha256 over every tensor (dtype, shape, bytes) and plain value in
the dict, in order. torch's zip reader checks no CRC, so a flipped byte in a tensor would otherwise load and run
with wrong weights; `read_checkpoint` recomputes the sum and refuses a file that does not match. Files without the
key (BasicSR releases, bare state dicts, files saved before the checksum) load as before.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKSUM_KEY = "tensors_sha256"
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file, the reason and what to do instead."""


def tensors_checksum(checkpoint: Any) -> str:
    """sha256 over the tensors and plain values of `checkpoint` (the checksum key itself left out)."""
    digest = hashlib.sha256()
    _feed(digest, checkpoint)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        items = [(key, item) for key, item in value.items() if key != CHECKSUM_KEY]
        digest.update(f"D{len(items)}".encode())
        for key, item in items:
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):  # a tuple may come back as either: both hash alike
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, float) and not isinstance(value, bool):
        digest.update(f"F{float.hex(float(value))}".encode())
    else:  # str, int, bool, None, torch.dtype...: their repr is stable across a save and load
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def with_checksum(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """`checkpoint` plus its `CHECKSUM_KEY` (a new dict; the tensors are shared, not copied)."""
    plain = {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}
    return {**plain, CHECKSUM_KEY: tensors_checksum(plain)}


def read_checkpoint(path: str | os.PathLike | BinaryIO, map_location: str | torch.device = "cpu") -> Any:
    """Load a model file with `weights_only=True` (no code runs) and check its checksum when it has one. Raises
    `FileNotFoundError` for a missing file and `CheckpointError` for anything else that cannot be used."""
    if isinstance(path, str | os.PathLike):
        _check_kind(Path(path))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers: refusing to unpickle them, as "
            "that can run code. Use a checkpoint saved as plain state dicts by this project or its author"
        ) from err
    except Exception as err:  # a cut or damaged zip raises many types (RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged: {type(err).__name__}); use another copy"
        ) from err
    expected = checkpoint.get(CHECKSUM_KEY) if isinstance(checkpoint, dict) else None
    if expected is not None and tensors_checksum(checkpoint) != expected:
        raise CheckpointError(
            f"{path} is damaged: its tensors no longer match the checksum written when it was saved (a bad copy "
            "or disk); use another copy, or an earlier checkpoint"
        )
    return checkpoint


def _check_kind(path: Path) -> None:
    """Name what a file is when it is not a torch.save checkpoint, before torch.load reports it in its own words."""
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (zero bytes): an interrupted copy or download; use another copy")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{path} is an ONNX file, not a PyTorch checkpoint: infer and the demo run it (--model), while evaluate, "
            "export and training need the .pt checkpoint it was exported from"
        )
    if head == ZIP_MAGIC and _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript file, not a checkpoint: infer and the demo run it (--model), while evaluate, "
            "export and training need the .pt checkpoint it was exported from"
        )
    if head != ZIP_MAGIC and head[:1] != b"\x80":  # neither torch's zip format nor its legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (no zip or pickle header); check the file name")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False  # a damaged zip: torch.load names it
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
