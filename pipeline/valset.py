"""Validation sets: the shards' `val` split, or a folder of photos from outside the training collection, cropped,
degraded once, deterministically, with real libjpeg.

Every validation image gets `variants` parameter draws from the full degradation ranges (no curriculum), seeded by
`seed` and the image's position, so the same shards and seed always give the same pixels. The noise is numpy's and
the JPEG is Pillow's (`pipeline.reference`), so validation numbers are real-world numbers.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from pipeline.config import DegradeConfig
from pipeline.degrade import param_row, sample_params
from pipeline.health import FIX, warn
from pipeline.io import IMAGE_SUFFIXES, decode_rgb8, image_entries, load_rgb8
from pipeline.reference import degrade_reference
from pipeline.shard_format import IMAGE_EXTS, read_manifest, split_shards


@dataclass
class ValSet:
    """`clean`, `degraded`: (M, 3, crop, crop) uint8 tensors on the CPU; `params`: (M,) tensors per `PARAM_KEYS`."""

    clean: torch.Tensor
    degraded: torch.Tensor
    params: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.clean.shape[0]

    def batches(self, batch_size: int, device: torch.device):
        """Yield (clean, degraded, params) batches as float32 [0, 1] on `device`, in a fixed order."""
        for start in range(0, len(self), batch_size):
            part = slice(start, start + batch_size)
            yield (
                self.clean[part].to(device).float().div_(255),
                self.degraded[part].to(device).float().div_(255),
                {k: v[part] for k, v in self.params.items()},
            )


def read_split_images(shards_dir: str | Path, split: str = "val", limit: int = 0) -> list[np.ndarray]:
    """Decode the images of one split in manifest order -> list of (H, W, 3) uint8.

    A shard that is missing, cut short or unreadable is left out whole, and a sample that does not decode alone:
    each is named in a warning with the count of images lost (like damaged train shards, `pipeline.health`), so
    the set stays a deterministic function of the readable files. No readable image at all is a clear stop."""
    folder = Path(shards_dir)
    manifest = read_manifest(folder)
    split_shards(folder, split)  # a clear error when the split has no shards
    images, lost, problems = [], 0, []
    for entry in (e for e in manifest["shards"] if e["split"] == split):
        try:
            decoded, bad = _read_shard(folder / entry["name"], entry["bytes"])
        except (OSError, tarfile.TarError, ValueError) as err:
            problems.append(f"{entry['name']}: {err}")
            lost += entry["samples"]
            warn(f"{split} shard {entry['name']} cannot be read ({err}): its {entry['samples']} images are left out")
            continue
        for key, err in bad:
            problems.append(f"{entry['name']} sample {key}: {err}")
            lost += 1
            warn(f"{split} shard {entry['name']}: sample {key} does not decode ({err}): left out")
        images += decoded
        if limit and len(images) >= limit:
            return images[:limit]
    if not images:
        raise ValueError(
            f"no readable '{split}' image in {folder} ({'; '.join(problems)}): {FIX.format(folder=folder)}"
        )
    if lost:
        warn(f"the {split} set of {folder} lacks {lost} image(s) ({FIX.format(folder=folder)})")
    return images


def _read_shard(path: Path, recorded_bytes: int) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """One shard's images, and (sample key, reason) for each sample that does not decode."""
    if not path.is_file():
        raise FileNotFoundError("missing")
    if path.stat().st_size != recorded_bytes:
        raise ValueError(f"{path.stat().st_size} bytes, the manifest says {recorded_bytes} (truncated copy?)")
    images, bad = [], []
    for sample in wds.WebDataset([str(path)], shardshuffle=False, empty_check=False, nodesplitter=None):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        try:
            if ext is None:
                raise ValueError("no image in the sample")
            images.append(decode_rgb8(sample[ext]))
        except (ValueError, OSError, SyntaxError, EOFError) as err:  # what Pillow raises for damaged bytes
            bad.append((sample["__key__"], str(err)))
    return images, bad


def center_crop(rgb8: np.ndarray, crop: int) -> np.ndarray:
    """Central crop of at most `crop` x `crop` (smaller images are kept whole, cut to a common square)."""
    h, w = rgb8.shape[:2]
    size = min(crop, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return rgb8[top : top + size, left : left + size]


def build_valset(
    shards_dir: str | Path, cfg: DegradeConfig, seed: int = 0, crop: int = 256, variants: int = 2, limit: int = 0
) -> ValSet:
    """Degrade the val split `variants` times per image with Pillow; deterministic in (shards, cfg, seed)."""
    images = read_split_images(shards_dir, "val", limit)
    if not images:
        raise ValueError(f"{shards_dir} has an empty val split: repack with a larger --val-fraction")
    return degrade_images(images, cfg, seed, crop, variants)


def read_folder_images(folder: str | Path) -> list[np.ndarray]:
    """The image files directly in `folder`, sorted by name, as (H, W, 3) uint8 (EXIF-upright, gray -> RGB)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"validation folder {folder} does not exist (val.sets names a folder of images)")
    paths = image_entries(folder)
    if not paths:
        raise ValueError(f"validation folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [load_rgb8(p) for p in paths]


def build_folder_valset(
    folder: str | Path, cfg: DegradeConfig, seed: int = 0, crop: int = 256, variants: int = 2
) -> ValSet:
    """A folder of photos degraded like the val split (same draws for the same seed); deterministic."""
    return degrade_images(read_folder_images(folder), cfg, seed, crop, variants)


def degrade_images(images: list[np.ndarray], cfg: DegradeConfig, seed: int, crop: int, variants: int) -> ValSet:
    """Central crops (the largest square of at most `crop` that every image has), `variants` Pillow degradations
    each, with parameters from the full ranges drawn by `seed`."""
    size = min(crop, *(min(a.shape[:2]) for a in images))
    generator = torch.Generator().manual_seed(seed)
    full_range = replace(cfg, curriculum=False, p_unclipped=0.0)  # validation images are real files: clipped
    params = sample_params(len(images) * variants, full_range, generator, torch.device("cpu"))
    clean, degraded = [], []
    for index in range(len(images) * variants):
        rgb8 = center_crop(images[index // variants], size)
        row = param_row(params, index)
        degraded.append(degrade_reference(rgb8, row, np.random.default_rng([seed, index])))
        clean.append(rgb8)
    return ValSet(_chw(clean), _chw(degraded), params)


def _chw(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
