"""Deterministic, atomic shard writing: tar members with fixed metadata, a DALI index, a sha256.

Members are written in USTAR format with mtime 0, uid/gid 0, empty user/group names and mode 0644, so the same
samples always give byte-identical tars. Each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
from pathlib import Path

from pipeline.shard_format import dali_index, index_name

TAR_BLOCK = 512
TAR_TAIL_BYTES = 2 * TAR_BLOCK + tarfile.RECORDSIZE  # end-of-archive blocks plus worst-case record padding


def member_bytes(size: int) -> int:
    """Bytes one tar member takes: its header block plus its data padded to whole blocks."""
    return TAR_BLOCK + math.ceil(size / TAR_BLOCK) * TAR_BLOCK


def plan_shards(sample_bytes: list[int], min_shards: int, max_shard_bytes: int) -> list[range]:
    """Cut samples (in order) into contiguous shards.

    At least `min(min_shards, samples)` shards with near-equal sample counts, then any shard over `max_shard_bytes`
    is cut again greedily, so every shard stays under the limit (a single sample larger than it gets its own shard).
    """
    count = len(sample_bytes)
    if count == 0:
        return []
    budget = max(max_shard_bytes - TAR_TAIL_BYTES, 1)
    wanted = max(math.ceil(sum(sample_bytes) / budget), min(min_shards, count), 1)
    bounds = [round(i * count / wanted) for i in range(wanted + 1)]
    shards: list[range] = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        first, used = start, 0
        for i in range(start, stop):
            if used and used + sample_bytes[i] > budget:
                shards.append(range(first, i))
                first, used = i, 0
            used += sample_bytes[i]
        shards.append(range(first, stop))
    return shards


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and a rename, so readers never see a partial file."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of (name, data) members with fixed metadata (deterministic output)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard(folder: Path, name: str, members: list[tuple[str, bytes]]) -> dict[str, str | int]:
    """Write one tar shard and its DALI index atomically; return its manifest entry (without split/keys)."""
    data = tar_bytes(members)
    path = folder / name
    atomic_write(path, data)
    atomic_write(folder / index_name(name), dali_index(path).encode())
    return {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "index": index_name(name)}
