"""The shard layout: tar keys, file names and the manifest schema, shared by packers and loaders.

A shard folder holds:
- `{split}-{index:05d}.tar`: WebDataset tars; each sample is `KEY.{IMAGE_EXTS[i]}` (the clean image, already
  normalised to 8-bit RGB, see `pipeline.io`) plus `KEY.json` (`SampleMeta`); KEY is a 7-digit sequence number,
  unique across the folder.
- `{split}-{index:05d}.idx`: the DALI index of that tar (the `wds2idx` text format).
- `manifest.json`: per shard samples/bytes/sha256, per split counts, the stored image format, skipped inputs with
  reasons, and the tool version.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, TypedDict, cast

from pipeline.io import IMAGE_SUFFIXES

FORMAT_VERSION = 1
SPLITS = ("train", "val")
IMAGE_EXTS = ("jpg", "png")  # tar member extensions a sample's image may have
DALI_EXT = "jpg;png"  # the same, in the syntax of DALI's fn.readers.webdataset `ext`
META_EXT = "json"
MANIFEST = "manifest.json"
SOURCE_SUFFIXES = IMAGE_SUFFIXES  # inputs packing reads, case-insensitive
STORE_RULE = "keep-plain-jpeg-else-png"  # manifest["image_format"]["rule"]: see `shards.encode`
DALI_INDEX_VERSION = "v1.2"  # first token of a `wds2idx` index file


class ShardEntry(TypedDict):
    """One tar of `manifest["shards"]`."""

    name: str  # shard_name(split, index)
    bytes: int
    sha256: str
    index: str  # its DALI index file, index_name(name)
    split: str
    samples: int
    first_key: str  # sample_key of its first sample


class SplitTotals(TypedDict):
    samples: int
    shards: int
    bytes: int
    min_width: int
    min_height: int


class Manifest(TypedDict):
    """`manifest.json`: written by `shards.pack`, read by `shards.verify` and the loaders."""

    tool: dict[str, Any]  # name, version, format_version
    args: dict[str, Any]  # the packing arguments
    image_format: dict[str, Any]  # rule (STORE_RULE), png_compress_level, counts per stored extension
    shuffled: bool
    seed: int
    splits: dict[str, SplitTotals]
    shards: list[ShardEntry]
    skipped: list[dict[str, str]]  # path, reason, detail
    ignored_files: int
    ignored: list[str]  # files not named like images


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tar"


def index_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".idx"


def sample_key(sequence: int) -> str:
    return f"{sequence:07d}"


def read_manifest(folder: str | Path) -> Manifest:
    """Load `manifest.json` of a shard folder, with a clear error when the folder is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a shard folder: {MANIFEST} is missing (run `python -m shards.pack`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged (not JSON: {err}): repack with `python -m shards.pack`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list) or "splits" not in manifest:
        raise ValueError(f"{path} is not a shard manifest (no shards and splits): repack with `python -m shards.pack`")
    return cast(Manifest, manifest)


def split_shards(folder: str | Path, split: str) -> list[Path]:
    """The tar files of one split, in manifest order."""
    manifest = read_manifest(folder)
    names = [entry["name"] for entry in manifest["shards"] if entry["split"] == split]
    if not names:
        raise ValueError(f"{folder} has no '{split}' shards (splits: {manifest['splits']})")
    return [Path(folder) / name for name in names]


def dali_index(tar_path: str | Path) -> str:
    """The DALI index text of a tar, as `wds2idx` writes it.

    Line 1: `v1.2 SAMPLES`; then one line per sample (consecutive members sharing the name before the first dot of
    the file name), listing each member as `EXT DATA_OFFSET SIZE NAME`, space-separated.
    """
    samples: list[list[str]] = []
    last_base = None
    with tarfile.open(tar_path, "r:") as archive:
        for member in archive:
            if not member.isreg():
                continue
            dot = member.name.find(".", member.name.rfind("/") + 1)
            base, ext = member.name[:dot], member.name[dot + 1 :]
            if not base or base.endswith("/"):
                continue
            entry = f"{ext} {member.offset_data} {member.size} {member.name}"
            if base == last_base:
                samples[-1].append(entry)
            else:
                samples.append([entry])
                last_base = base
    if not samples:
        raise ValueError(f"{tar_path}: no samples, DALI cannot index an empty tar")
    return f"{DALI_INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(entries) + "\n" for entries in samples)
