"""DALI backend: the same patches as `loader_torch`, decoded and cut by an NVIDIA DALI pipeline.

One DALI iteration reads `batch_size` images (decoder "mixed" on a CUDA device, "cpu" otherwise with
`device_id=None`, DALI's CPU-only mode) and cuts `crops_per_image` random PxP patches from each, each flipped
and rotated by a random multiple of 90 degrees (nearest-neighbour, so pixels are copied, never interpolated).
The wrapper yields `crops_per_image` batches per iteration, batch k holding patch k of every image: each batch
then has patches of `batch_size` distinct images, as the torch backend's crop shuffle buffer gives.

DALI's reader shuffles only inside `initial_fill` (DALI PR#6491), so shards must be pre-shuffled at pack time
(`manifest["shuffled"]`); it reshuffles the order of the tars after each epoch and re-deals the samples to
the ranks (each epoch the ranks together read every sample once; a rank's own set changes). The reader never stops:
the iterator is built without `reader_name`/`size`, so epochs flow into each other (iterations, not epochs).
DALI cannot skip a sample it fails to decode (its pipeline stops): shards missing or truncated are left out at start
(`pipeline.health.check_shards`), and a damaged sample stops the run with `DataSkipLimit` naming the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.config import LoaderConfig
from pipeline.health import DataSkipLimit
from pipeline.shard_format import DALI_EXT, index_name

if TYPE_CHECKING:  # DALI is optional: imported only where a DALI loader is built
    from nvidia.dali.data_node import DataNode
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator


def check_dali_shuffle(manifest: dict, split: str, cfg: LoaderConfig) -> None:
    """Refuse shards that are not pre-shuffled when the reader's buffer cannot hold a whole shard."""
    largest = max(entry["samples"] for entry in manifest["shards"] if entry["split"] == split)
    if manifest.get("shuffled") is not True and cfg.shuffle_buffer < largest:
        raise ValueError(
            f"the '{split}' shards are not pre-shuffled (manifest 'shuffled' is not true) and DALI shuffles only "
            f"inside its buffer (loader.shuffle_buffer={cfg.shuffle_buffer} < {largest} samples in a shard): "
            f"repack with `python -m shards.pack` (which shuffles), raise loader.shuffle_buffer to {largest}, "
            f"or use loader.backend=torch"
        )


def _random_patch(image: DataNode, patch_size: int) -> DataNode:
    """One random PxP patch of each HWC image, randomly mirrored and rotated by 0/90/180/270 degrees."""
    from nvidia.dali import fn, types

    patch = fn.crop(
        image,
        crop=(patch_size, patch_size),
        crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
        crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
        out_of_bounds_policy="error",
    )
    patch = fn.flip(patch, horizontal=fn.random.coin_flip(probability=0.5, dtype=types.INT32))
    angle = fn.random.uniform(values=[0.0, 90.0, 180.0, 270.0])
    return fn.rotate(patch, angle=angle, keep_size=True, interp_type=types.INTERP_NN)


def build_pipeline(
    shards: list[Path], cfg: LoaderConfig, device_id: int | None, rank: int = 0, world_size: int = 1
) -> Pipeline:
    """DALI pipeline whose one output per image is (crops_per_image, 3, P, P) uint8.

    Outputs live on GPU `device_id` (decoder "mixed"), or on the CPU for `device_id=None` (CPU-only DALI).
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=max(cfg.workers, 1),
        device_id=device_id,
        seed=cfg.seed * 1000 + rank,
        prefetch_queue_depth=cfg.prefetch,
    )
    def patches_pipeline():
        encoded = fn.readers.webdataset(
            paths=[str(path) for path in shards],
            index_paths=[str(path.parent / index_name(path.name)) for path in shards],
            ext=[DALI_EXT],
            random_shuffle=True,
            initial_fill=max(cfg.shuffle_buffer, 1),
            shuffle_after_epoch=True,
            shuffle_after_epoch_seed=cfg.seed,
            shard_id=rank,
            num_shards=world_size,
            seed=cfg.seed * 1000 + rank,
            missing_component_behavior="error",
            name="Reader",
        )
        image = fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB)
        patches = [_random_patch(image, cfg.patch_size) for _ in range(cfg.crops_per_image)]
        stacked = fn.stack(*patches) if len(patches) > 1 else fn.expand_dims(patches[0], axes=[0])
        return fn.transpose(stacked, perm=[0, 3, 1, 2])  # (K, 3, P, P)

    return patches_pipeline()


def dali_loader(
    shards: list[Path], cfg: LoaderConfig, device: torch.device, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """Infinite `clean` batches: (N, 3, P, P) float32 RGB in [0, 1] on `device`, converted there from uint8.

    The pipeline is built now (errors surface at start); a CUDA `device` gets the "mixed" decoder on that GPU.
    """
    from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: F811 (the runtime import)

    device_id = None
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    pipe = build_pipeline(shards, cfg, device_id, rank, world_size)
    pipe.build()
    return _to_device(DALIGenericIterator([pipe], ["patches"]), cfg, device)


def _to_device(
    iterator: DALIGenericIterator | Iterator, cfg: LoaderConfig, device: torch.device
) -> Iterator[torch.Tensor]:
    """Split each (N, K, 3, P, P) uint8 DALI output into K float batches on `device`; never stops."""
    expected = (cfg.batch_size, cfg.crops_per_image, 3, cfg.patch_size, cfg.patch_size)
    while True:
        try:
            outputs = next(iterator)
        except StopIteration:
            iterator.reset()
            continue
        except RuntimeError as err:  # DALI stops the pipeline on a sample it cannot read; it has no skip option
            lines = [line for line in str(err).splitlines() if "Failed to" in line or ".tar" in line]
            raise DataSkipLimit(
                f"DALI could not read a training sample ({lines[0] if lines else str(err).strip()[:200]}); DALI "
                f"cannot skip damaged samples (loader.backend=torch skips and counts them): check the shards with "
                f"`python -m shards.verify` and repack them with `python -m shards.pack`"
            ) from err
        patches = outputs[0]["patches"]  # (N, K, 3, P, P) uint8
        if tuple(patches.shape) != expected:
            raise RuntimeError(f"DALI gave patches of shape {tuple(patches.shape)}, expected {expected}")
        patches = patches.to(device, non_blocking=True)
        for k in range(cfg.crops_per_image):
            yield patches[:, k].float().div_(255.0)  # (N, 3, P, P)
