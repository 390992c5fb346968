"""DALI backend: the seekable stream (`pipeline.stream`) decoded and cut by an NVIDIA DALI pipeline.

A Python `GroupSource` feeds `fn.external_source` (batch mode) with the encoded bytes of each step group's
`batch_size` images and the crop position, mirror and rotation of each of their `crops_per_image` patches, all from
`pipeline.stream` (the same functions as the torch backend, so the batch at step k depends on (seed, rank, k) only).
`fn.decoders.image` decodes ("mixed" on a CUDA device, "cpu" with `device_id=None`, DALI's CPU-only mode), `fn.crop`
cuts, `fn.flip` mirrors and `fn.rotate` turns by multiples of 90 degrees (nearest-neighbour: pixels are copied,
never interpolated). The wrapper yields patch c of every image as step c of the group. Starting at step k reads one
group first, as starting at 0 does.
DALI cannot skip a sample it fails to decode (its pipeline stops): shards missing or truncated are left out at start
(`pipeline.health.check_shards`), and a damaged sample stops the run with `DataSkipLimit` naming it and the fix.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.config import LoaderConfig
from pipeline.health import DataSkipLimit
from pipeline.io import decode_rgb8
from pipeline.stream import SampleRef, crop_params, position, read_bytes, sample_index

if TYPE_CHECKING:  # DALI is optional: imported only where a DALI loader is built
    from nvidia.dali.pipeline import Pipeline


class GroupSource:
    """Batches for `fn.external_source`: per step group, [encoded, then pos_x, pos_y, mirror, angle per patch]."""

    def __init__(self, index: list[SampleRef], cfg: LoaderConfig, rank: int, world_size: int, first_group: int):
        self.index, self.cfg, self.rank, self.world_size = index, cfg, rank, world_size
        self.first_group = first_group
        self.reads = 0  # images read so far (what the resume-cost test counts)
        self.recent: list[SampleRef] = []  # the samples of the groups in flight, to name a damaged one

    def __iter__(self) -> Iterator[list[list[np.ndarray]]]:
        for group in itertools.count(self.first_group):
            yield self.group(group)

    def group(self, group: int) -> list[list[np.ndarray]]:
        cfg, length = self.cfg, len(self.index)
        outputs: list[list[np.ndarray]] = [[] for _ in range(1 + 4 * cfg.crops_per_image)]
        refs = []
        for image in range(cfg.batch_size):
            ref = self.index[
                sample_index(cfg.seed, position(group, self.rank, self.world_size, cfg.batch_size, image), length)
            ]
            refs.append(ref)
            outputs[0].append(np.frombuffer(read_bytes(ref), dtype=np.uint8))
            for c, crop in enumerate(crop_params(cfg.seed, group, self.rank, image, cfg.crops_per_image)):
                values = (crop.pos_x, crop.pos_y, int(crop.mirror), 90.0 * crop.turns)
                for slot, (value, dtype) in enumerate(
                    zip(values, (np.float32, np.float32, np.int32, np.float32), strict=True)
                ):
                    outputs[1 + 4 * c + slot].append(np.array(value, dtype=dtype))
        self.reads += cfg.batch_size
        self.recent = (self.recent + refs)[-cfg.batch_size * (cfg.prefetch + 2) :]
        return outputs


def build_pipeline(source: GroupSource, cfg: LoaderConfig, device_id: int | None, rank: int = 0) -> Pipeline:
    """DALI pipeline whose one output per image is (crops_per_image, 3, P, P) uint8, on GPU `device_id` or the CPU."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=max(cfg.workers, 1),
        device_id=device_id,
        seed=cfg.seed * 1000 + rank,  # no DALI random operator runs: every draw comes from pipeline.stream
        prefetch_queue_depth=cfg.prefetch,
    )
    def patches_pipeline():
        encoded, *params = fn.external_source(source=source, num_outputs=1 + 4 * cfg.crops_per_image, batch=True)
        image = fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB)
        patches = []
        for c in range(cfg.crops_per_image):
            pos_x, pos_y, mirror, angle = params[4 * c : 4 * c + 4]
            size = (cfg.patch_size, cfg.patch_size)
            patch = fn.crop(image, crop=size, crop_pos_x=pos_x, crop_pos_y=pos_y, out_of_bounds_policy="error")
            patch = fn.flip(patch, horizontal=mirror)
            patches.append(fn.rotate(patch, angle=angle, keep_size=True, interp_type=types.INTERP_NN))
        stacked = fn.stack(*patches) if len(patches) > 1 else fn.expand_dims(patches[0], axes=[0])
        return fn.transpose(stacked, perm=[0, 3, 1, 2])  # (K, 3, P, P)

    return patches_pipeline()


def dali_loader(
    index: list[SampleRef],
    cfg: LoaderConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> DaliBatches:
    """Infinite `clean` batches from step `start_step` on: (N, 3, P, P) float32 RGB in [0, 1] on `device`.

    The pipeline is built now (errors surface at start); a CUDA `device` gets the "mixed" decoder on that GPU.
    """
    device_id = None
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    group, skip = divmod(start_step, cfg.crops_per_image)
    source = GroupSource(index, cfg, rank, world_size, group)
    pipe = build_pipeline(source, cfg, device_id, rank)
    pipe.build()
    return DaliBatches(pipe, cfg, device, source, skip)


class DaliBatches:
    """The steps of a DALI pipeline on the device; `source` counts what was read (for tests and damage reports).

    The iterator over the pipeline is made at the first `next`, where its first run (which may meet a damaged
    sample) raises `DataSkipLimit` as any later one does.
    """

    def __init__(self, pipe: Pipeline, cfg: LoaderConfig, device: torch.device, source: GroupSource, skip: int = 0):
        self.pipe, self.cfg, self.device, self.source, self.skip = pipe, cfg, device, source, skip
        self._steps: Iterator[torch.Tensor] | None = None

    def __iter__(self) -> DaliBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._steps is None:
            self._steps = device_batches(self._outputs(), self.cfg, self.device, self.source)
            for _ in range(self.skip):  # steps of the first group before the start step: no image is read again
                next(self._steps)
        return next(self._steps)

    def _outputs(self) -> Iterator:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        iterator = DALIGenericIterator([self.pipe], ["patches"])  # runs the pipeline once (its prefetch)
        yield from iterator

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()


def damaged(refs: list[SampleRef]) -> str:
    """The first of `refs` that PIL cannot decode, in words (what DALI's own error does not name)."""
    for ref in refs:
        try:
            decode_rgb8(read_bytes(ref))
        except (ValueError, OSError, SyntaxError, EOFError) as err:
            return f"sample {ref.key} of {ref.shard}: {type(err).__name__}: {err}"
    return "no sample of the last batches fails in PIL"


def device_batches(
    iterator, cfg: LoaderConfig, device: torch.device, source: GroupSource | None
) -> Iterator[torch.Tensor]:
    """Split each (N, K, 3, P, P) uint8 DALI output into K float batches on `device`; never stops."""
    expected = (cfg.batch_size, cfg.crops_per_image, 3, cfg.patch_size, cfg.patch_size)
    while True:
        try:
            outputs = next(iterator)
        except RuntimeError as err:  # DALI stops the pipeline on a sample it cannot read; it has no skip option
            which = damaged(source.recent) if source is not None else str(err).strip()[:200]
            raise DataSkipLimit(
                f"DALI could not read a training sample ({which}); DALI cannot skip damaged samples "
                f"(loader.backend=torch skips and counts them): check the shards with `python -m shards.verify` "
                f"and repack them with `python -m shards.pack`"
            ) from err
        patches = outputs[0]["patches"]  # (N, K, 3, P, P) uint8
        if tuple(patches.shape) != expected:
            raise RuntimeError(f"DALI gave patches of shape {tuple(patches.shape)}, expected {expected}")
        patches = patches.to(device, non_blocking=True)
        for k in range(cfg.crops_per_image):
            yield patches[:, k].float().div_(255.0)  # (N, 3, P, P)
