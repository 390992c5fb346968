"""Torch backend: the seekable stream (`pipeline.stream`) decoded by PIL in DataLoader workers.

A map-style `GroupImages` dataset turns (group, image) into that image's `crops_per_image` (3, P, P) uint8 patches
(decoded with `pipeline.io.decode_rgb8`, cut, mirrored and turned with numpy); `GroupSampler` asks for the
`batch_size` images of each step group in order, from the group of the start step on, so workers decode in parallel
and batches stay in step order. The main process moves whole uint8 groups to the device, converts them there
(uint8 is 4x less host-to-device traffic than float32) and yields patch c of every image as step c of
the group. Starting at step k reads one group, as starting at step 0 does: resume costs the same at any step.

Damaged data is skipped, not fatal (`pipeline.health`): a sample whose bytes do not read or decode is counted and
named, and the next sample of the stream stands in for it (a pure function of the data, so resume stays exact);
`DeviceBatches.close()` stops the workers, so a run that stops on an error exits instead of waiting for workers that
ignore SIGTERM.
"""

from __future__ import annotations

import atexit
import itertools
import signal
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.config import LoaderConfig
from pipeline.health import SkipCounter
from pipeline.io import decode_rgb8
from pipeline.stream import CropParams, SampleRef, crop_params, position, read_bytes, sample_index

DECODE_ERRORS = (ValueError, OSError, SyntaxError, EOFError)


def cut(image: np.ndarray, params: list[CropParams], patch_size: int) -> np.ndarray:
    """(K, 3, P, P) uint8 patches of an (H, W, 3) uint8 image, one per `params` entry."""
    height, width = image.shape[:2]
    if height < patch_size or width < patch_size:
        raise ValueError(f"image of {width}x{height} is smaller than the {patch_size}px patch")
    crops = []
    for crop in params:
        top = min(int(crop.pos_y * (height - patch_size + 1)), height - patch_size)
        left = min(int(crop.pos_x * (width - patch_size + 1)), width - patch_size)
        patch = image[top : top + patch_size, left : left + patch_size]
        patch = np.rot90(patch[:, ::-1] if crop.mirror else patch, k=crop.turns)
        crops.append(patch.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops))


class GroupImages(Dataset):
    """Item (group, image) -> (K, 3, P, P) uint8 patches of that image of this rank's step group.

    With a `counter`, an unreadable sample is counted and the next stream position stands in; without, it raises.
    """

    def __init__(self, index: list[SampleRef], cfg: LoaderConfig, rank: int, world_size: int, counter=None):
        self.index, self.cfg, self.rank, self.world_size, self.counter = index, cfg, rank, world_size, counter

    def __len__(self) -> int:  # a stream has no end; DataLoader only needs a number
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        group, image = item
        cfg = self.cfg
        params = crop_params(cfg.seed, group, self.rank, image, cfg.crops_per_image)
        start = position(group, self.rank, self.world_size, cfg.batch_size, image)
        for step in range(len(self.index)):
            ref = self.index[sample_index(cfg.seed, start + step, len(self.index))]
            try:
                patches = cut(decode_rgb8(read_bytes(ref)), params, cfg.patch_size)
            except DECODE_ERRORS as err:
                if self.counter is None:
                    raise ValueError(f"sample {ref.key} of {ref.shard}: {err}") from err
                if step == 0:  # counted at its own position only: a stand-in is counted where it is due
                    self.counter.skip(ref.shard, f"sample {ref.key}", f"{type(err).__name__}: {err}")
                continue
            if self.counter is not None and step == 0:
                self.counter.read()
            return torch.from_numpy(patches)
        raise ValueError(f"no sample of the split decodes (last: {ref.key} of {ref.shard})")


class GroupSampler(Sampler):
    """The (group, image) items of each step group, from `first_group` on, for ever."""

    def __init__(self, first_group: int, batch_size: int):
        self.first_group, self.batch_size = first_group, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for group in itertools.count(self.first_group):
            yield [(group, image) for image in range(self.batch_size)]


def group_dataloader(dataset: GroupImages, cfg: LoaderConfig, device: torch.device, first_group: int) -> DataLoader:
    """DataLoader of (N, K, 3, P, P) uint8 groups; pinned host memory only for a CUDA device."""
    workers = cfg.workers > 0
    return DataLoader(
        dataset,
        batch_sampler=GroupSampler(first_group, cfg.batch_size),
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers,
        prefetch_factor=cfg.prefetch if workers else None,
        worker_init_fn=_ignore_stop_signals,
    )


def _ignore_stop_signals(_worker_id: int) -> None:
    """Ctrl-C / SIGTERM to the process group is the trainer's to handle (checkpoint, then stop); workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def torch_loader(
    index: list[SampleRef],
    cfg: LoaderConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    counter: SkipCounter | None = None,
    start_step: int = 0,
) -> DeviceBatches:
    """Infinite `clean` batches from step `start_step` on: (N, 3, P, P) float32 RGB in [0, 1] on `device`."""
    dataset = GroupImages(index, cfg, rank, world_size, counter)
    group, skip = divmod(start_step, cfg.crops_per_image)
    return DeviceBatches(group_dataloader(dataset, cfg, device, group), device, counter, skip)


class DeviceBatches:
    """The steps of a group DataLoader on the device; checks the skip counter after each group. `close()` stops
    the worker processes (they ignore SIGTERM, so an interpreter exit would otherwise wait on them for ever)."""

    def __init__(self, loader: DataLoader, device: torch.device, counter: SkipCounter | None = None, skip: int = 0):
        self.loader, self.device, self.counter, self.skip = loader, device, counter, skip
        self._batches: Iterator | None = None
        self._group: torch.Tensor | None = None
        self._next = 0

    def __iter__(self) -> DeviceBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter(self.loader)
            atexit.register(_close_at_exit, weakref.ref(self))  # runs before multiprocessing's own exit handler
        if self._group is None or self._next == self._group.shape[1]:
            group = next(self._batches)  # (N, K, 3, P, P) uint8
            if self.counter is not None:
                self.counter.check()
            self._group = group.to(self.device, non_blocking=self.device.type == "cuda")
            self._next, self.skip = self.skip, 0
        self._next += 1
        return self._group[:, self._next - 1].float().div_(255.0)  # (N, 3, P, P)

    def skip_note(self) -> str | None:
        """A line for the run log when more samples were skipped since the last call."""
        return self.counter.note() if self.counter is not None else None

    def close(self) -> None:
        shutdown = getattr(self._batches, "_shutdown_workers", None)  # what the iterator's __del__ calls
        if shutdown is not None:
            shutdown()
        self._batches = None


def _close_at_exit(batches: weakref.ref) -> None:
    alive = batches()
    if alive is not None:
        alive.close()
