"""Torch/webdataset backend: random patches from shard tars, decoded by PIL in DataLoader workers.

Each pass over the split shuffles the shard order (same permutation on every rank and worker, drawn from
`seed + pass index`) and deals the shards round-robin to the `world_size * workers` readers, so one pass reads
each sample exactly once. Workers decode with `pipeline.io.decode_rgb8`, cut `crops_per_image` random PxP
patches per image, flip/rotate each by a random element of the 8-element dihedral group (numpy, uint8), mix
them in a shuffle buffer and emit uint8 CHW patches; the main process moves whole uint8 batches to the device
and converts to float there ([DALI] `fast_collate`: 4x less host-to-device traffic than float32).

Damaged data is skipped, not fatal (`pipeline.health`): a tar read error ends that shard (webdataset's handler
continues with the next), a sample that does not decode is dropped, and a shard that yields fewer samples than its
manifest entry (a truncated tar, a broken header) counts the missing ones; each is named in a warning and counted in
a `SkipCounter` the trainer checks against `loader.max_bad_share`. `DeviceBatches.close()` stops the workers, so a
run that stops on an error exits instead of waiting for workers that ignore SIGTERM.
"""

from __future__ import annotations

import atexit
import itertools
import signal
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.config import LoaderConfig
from pipeline.health import SkipCounter
from pipeline.io import decode_rgb8
from pipeline.shard_format import IMAGE_EXTS


def shard_order(num_shards: int, seed: int, pass_index: int) -> list[int]:
    """The shard visiting order of one pass: a permutation every rank and worker agrees on."""
    return np.random.default_rng([seed, pass_index]).permutation(num_shards).tolist()


def reader_shards(
    num_shards: int, seed: int, pass_index: int, rank: int, world_size: int, worker: int, workers: int
) -> list[int]:
    """Indices of the shards that one (rank, worker) reads in one pass; the readers partition all shards."""
    reader, readers = rank * workers + worker, world_size * workers
    return shard_order(num_shards, seed, pass_index)[reader::readers]


def check_shard_count(num_shards: int, workers: int, world_size: int) -> None:
    """Refuse setups where some reader would get no shard (webdataset then hangs, errs or clusters samples)."""
    readers = max(workers, 1) * world_size
    if num_shards < readers:
        raise ValueError(
            f"{num_shards} shards cannot feed {max(workers, 1)} workers x {world_size} ranks = {readers} readers: "
            f"repack with `python -m shards.pack --min-shards {readers}` (or more), or lower loader.workers"
        )


def random_crops(image: np.ndarray, count: int, patch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random (3, P, P) uint8 patches of an (H, W, 3) uint8 image, each randomly flipped and rotated."""
    height, width = image.shape[:2]
    if height < patch_size or width < patch_size:
        raise ValueError(f"image of {width}x{height} is smaller than the {patch_size}px patch")
    crops = []
    for _ in range(count):
        top = int(rng.integers(0, height - patch_size + 1))
        left = int(rng.integers(0, width - patch_size + 1))
        crop = image[top : top + patch_size, left : left + patch_size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)))  # (3, P, P)
    return crops


def _image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise ValueError(f"sample {sample['__key__']} in {sample['__url__']} has no image ({'/'.join(IMAGE_EXTS)})")


class PatchStream(IterableDataset):
    """Yields `(patch, key)`: a (3, P, P) uint8 tensor and the sample key it was cut from.

    `passes=None` repeats forever (training); a number stops after that many passes and drains the buffer
    (used to check that a pass reads each sample exactly once). `expected[i]` is the manifest's sample count of
    `shards[i]`; with a `counter`, unreadable samples are skipped and counted, else they raise.
    """

    def __init__(
        self,
        shards: list[Path],
        cfg: LoaderConfig,
        rank: int = 0,
        world_size: int = 1,
        passes: int | None = None,
        expected: list[int] | None = None,
        counter: SkipCounter | None = None,
    ):
        super().__init__()
        self.shards = [str(path) for path in shards]
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.passes = passes
        self.expected = expected
        self.counter = counter

    def samples(self, worker: int, workers: int) -> Iterator[dict]:
        """Raw tar samples of this reader, pass after pass, each pass in a freshly shuffled shard order."""
        passes = itertools.count() if self.passes is None else range(self.passes)
        for pass_index in passes:
            mine = reader_shards(
                len(self.shards), self.cfg.seed, pass_index, self.rank, self.world_size, worker, workers
            )
            for i in mine:
                yield from self.shard_samples(i)

    def shard_samples(self, index: int) -> Iterator[dict]:
        """The samples of one shard; with a counter, a read error ends the shard and the shortfall is counted."""
        url = self.shards[index]
        if self.counter is None:
            yield from wds.tariterators.tarfile_samples(iter([{"url": url}]))
            return
        errors: list[str] = []

        def handler(err: Exception) -> bool:
            errors.append(f"{type(err).__name__}: {str(err.args[0] if err.args else err).split(' @ ')[0]}")
            return True  # go on: webdataset ends this tar and continues with the next source

        count = 0
        for sample in wds.tariterators.tarfile_samples(iter([{"url": url}]), handler=handler):
            count += 1
            yield sample
        missing = (self.expected[index] if self.expected else count) - count
        if missing > 0 or errors:
            why = errors[0] if errors else "the tar ends early or a damaged header hides them"
            what = f"{max(missing, 0)} of its {self.expected[index] if self.expected else count} samples unread"
            self.counter.skip(url, what, why, count=max(missing, 0))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.cfg.seed, self.rank, worker])
        buffer: list[tuple[np.ndarray, str]] = []
        for sample in self.samples(worker, workers):
            try:
                crops = random_crops(
                    decode_rgb8(_image_bytes(sample)), self.cfg.crops_per_image, self.cfg.patch_size, rng
                )
            except (ValueError, OSError, SyntaxError, EOFError) as err:
                if self.counter is None:
                    raise ValueError(f"sample {sample['__key__']} of {sample['__url__']}: {err}") from err
                self.counter.skip(sample["__url__"], f"sample {sample['__key__']}", f"{type(err).__name__}: {err}")
                continue
            if self.counter is not None:
                self.counter.read()
            for crop in crops:
                if len(buffer) < max(self.cfg.shuffle_buffer, 1):
                    buffer.append((crop, sample["__key__"]))
                    continue
                slot = int(rng.integers(0, len(buffer)))
                out, buffer[slot] = buffer[slot], (crop, sample["__key__"])
                yield torch.from_numpy(out[0]), out[1]
        for slot in rng.permutation(len(buffer)):
            yield torch.from_numpy(buffer[slot][0]), buffer[slot][1]


def patch_dataloader(
    shards: list[Path], cfg: LoaderConfig, device: torch.device, rank: int = 0, world_size: int = 1, **stream_kw
) -> DataLoader:
    """DataLoader of `(patches (N, 3, P, P) uint8, keys)` batches; pinned host memory only for a CUDA device."""
    check_shard_count(len(shards), cfg.workers, world_size)
    workers = cfg.workers > 0
    return DataLoader(
        PatchStream(shards, cfg, rank, world_size, **stream_kw),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers,
        prefetch_factor=cfg.prefetch if workers else None,
        drop_last=False,  # an endless stream has no last batch; a finite one (passes=N) keeps every sample
        worker_init_fn=_ignore_stop_signals,
    )


def _ignore_stop_signals(_worker_id: int) -> None:
    """Ctrl-C / SIGTERM to the process group is the trainer's to handle (checkpoint, then stop); workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def torch_loader(
    shards: list[Path],
    cfg: LoaderConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    expected: list[int] | None = None,
    counter: SkipCounter | None = None,
) -> DeviceBatches:
    """Infinite `clean` batches: (N, 3, P, P) float32 RGB in [0, 1] on `device`, converted there from uint8.

    The DataLoader is built (and the setup checked) now, not at the first `next`. With a `counter`, unreadable
    samples are skipped and counted (`expected`: the manifest's sample count per shard).
    """
    loader = patch_dataloader(shards, cfg, device, rank, world_size, expected=expected, counter=counter)
    return DeviceBatches(loader, device, counter)


class DeviceBatches:
    """The batches of a patch DataLoader on the device; checks the skip counter after each batch. `close()` stops
    the worker processes (they ignore SIGTERM, so an interpreter exit would otherwise wait on them for ever)."""

    def __init__(self, loader: DataLoader, device: torch.device, counter: SkipCounter | None = None):
        self.loader, self.device, self.counter = loader, device, counter
        self._batches: Iterator | None = None

    def __iter__(self) -> DeviceBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter(self.loader)
            atexit.register(_close_at_exit, weakref.ref(self))  # runs before multiprocessing's own exit handler
        patches, _keys = next(self._batches)
        if self.counter is not None:
            self.counter.check()
        return patches.to(self.device, non_blocking=self.device.type == "cuda").float().div_(255.0)  # (N, 3, P, P)

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
