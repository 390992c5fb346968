"""The seekable sample stream both loaders share: the batch at step k is a pure function of (seed, rank, step).

`build_index` reads the tar headers of a split's shards once at loader start (headers only: tarfile seeks over the
data) and lists each sample's image as (shard, byte offset, size, key). A header that no longer parses hides the
members after it: those samples are missing from the index and counted as lost at start (`pipeline.health`), as
are the shortfalls against the manifest's sample count.

Steps come in groups of `crops_per_image`: group g = step // K reads `batch_size` images per rank and cuts K patches
from each; step g*K + c is patch c of every image (each batch has N distinct images, one decode feeds K steps).
Image i of group g on `rank` sits at global position p = (g * world_size + rank) * N + i; its sample is entry
p mod L of the permutation of epoch p // L (L = samples in the index), drawn from (seed, epoch), so the ranks of one
group read disjoint samples and each epoch reads every sample once. Its K crop positions, mirrors and rotations come
from an RNG seeded with (seed, g, rank, i), whichever worker decodes it. Starting at any step reads one group.
"""

from __future__ import annotations

import functools
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.shard_format import IMAGE_EXTS


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's image bytes lie: `size` bytes at `offset` of tar `shard`."""

    shard: str
    offset: int
    size: int
    key: str


@dataclass(frozen=True)
class CropParams:
    """One patch of an image: position as fractions of the free range, mirror, counter-clockwise quarter turns."""

    pos_y: float
    pos_x: float
    mirror: bool
    turns: int


def shard_refs(shard: Path) -> tuple[list[SampleRef], str | None]:
    """The image members of one tar in order, and the read error that ended the scan early (None when whole)."""
    refs: list[SampleRef] = []
    try:
        with tarfile.open(shard, "r:") as archive:
            for member in archive:
                dot = member.name.find(".", member.name.rfind("/") + 1)
                if member.isreg() and dot > 0 and member.name[dot + 1 :] in IMAGE_EXTS:
                    refs.append(SampleRef(str(shard), member.offset_data, member.size, member.name[:dot]))
    except (tarfile.TarError, OSError, EOFError) as err:
        return refs, f"{type(err).__name__}: {err}"
    return refs, None


def build_index(shards: list[Path], expected: list[int]) -> tuple[list[SampleRef], list[tuple[Path, int, str]]]:
    """All samples of `shards`, and (shard, samples missing, why) for each tar with fewer than `expected` of them
    (tarfile takes a header with a bad checksum for the end of the archive, so the shortfall is what tells)."""
    index, broken = [], []
    for shard, count in zip(shards, expected, strict=True):
        refs, error = shard_refs(shard)
        index.extend(refs)
        if error is not None or len(refs) < count:
            broken.append((shard, count - len(refs), error or "the tar ends early or a damaged header hides them"))
    return index, broken


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, length: int) -> np.ndarray:
    """The sample order of one epoch: a permutation every rank and worker agrees on."""
    return np.random.default_rng([seed, epoch]).permutation(length)


def sample_index(seed: int, position: int, length: int) -> int:
    """Index (into the sample index) of the sample at global stream position `position`."""
    epoch, offset = divmod(position, length)
    return int(epoch_order(seed, epoch, length)[offset])


def position(group: int, rank: int, world_size: int, batch_size: int, image: int) -> int:
    """Global stream position of image `image` of `rank`'s batch in step group `group`."""
    return (group * world_size + rank) * batch_size + image


def crop_params(seed: int, group: int, rank: int, image: int, count: int) -> list[CropParams]:
    """The `count` patches of one image, drawn from (seed, group, rank, image) only."""
    rng = np.random.default_rng([seed, group, rank, image])
    draws = rng.random((count, 3))
    turns = rng.integers(0, 4, count)
    return [CropParams(float(y), float(x), bool(m < 0.5), int(t)) for (y, x, m), t in zip(draws, turns, strict=True)]


def read_bytes(ref: SampleRef) -> bytes:
    """The stored image bytes of one sample; OSError when the tar ends before them."""
    with open(ref.shard, "rb") as file:
        file.seek(ref.offset)
        data = file.read(ref.size)
    if len(data) != ref.size:
        raise OSError(f"{Path(ref.shard).name} ends {ref.size - len(data)} bytes before sample {ref.key} does")
    return data
