"""Host-device sync discipline: the trainer's step must never wait for the device, and launches few ops.

- `host_side()` marks code that reads host tensors only (degradation parameters drawn on the CPU, group sizes).
- `NoDeviceReads` is a dispatch mode that raises on every op that makes the host wait for a device value
  (`.item()`, `.tolist()`, `bool(t)`, `nonzero`, `masked_select`, device-to-host copies, ...) outside `host_side()`.
  On a CPU every tensor is on the "device", so it flags any such read the step does not declare; on CUDA
  `torch.cuda.set_sync_debug_mode("error")` checks the same thing in the driver (tests/test_train_sync.py does both).
- `OpCounter` counts the aten ops a piece of code runs outside `host_side()` that compute (each is at least one
  kernel launch on a GPU), by name; views and other metadata-only ops launch nothing and are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

aten = torch.ops.aten
DEVICE_READS = {
    aten._local_scalar_dense.default,  # .item(), .tolist(), bool(t), int(t), float(t)
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.equal.default,
}

METADATA_ONLY = {aten.detach.default, aten.lift_fresh.default, aten._unsafe_view.default}


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: pinned memory and a non-blocking copy on CUDA."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostReadError(RuntimeError):
    pass


@contextmanager
def host_side() -> Iterator[None]:
    """Run the block with the dispatch modes above switched off: it works on host tensors only."""
    with _disable_current_modes():
        yield


class NoDeviceReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DEVICE_READS or _device_to_host(func, args, kwargs):
            raise HostReadError(f"{func} reads a device value back to the host inside the step")
        return func(*args, **kwargs)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func in METADATA_ONLY):
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _device_to_host(func, args: tuple, kwargs: dict) -> bool:
    """A copy from an accelerator tensor into host memory (`.cpu()`, `.to("cpu")`, `host.copy_(device)`)."""
    if func is aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    if func is aten.copy_.default:
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False
