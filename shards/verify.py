"""Check a shard folder against its manifest: `python -m shards.verify OUT` (exit 0 when every check passes).

Checks: every listed shard exists with the recorded bytes and sha256; it is a readable tar whose samples and keys
match the manifest; each sample has one image and one JSON member; every image decodes to 8-bit RGB at the size its
metadata records; each DALI index matches its tar; keys are unique across shards; no tar is left unlisted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

from PIL import Image

from pipeline.command import run_command
from pipeline.io import decode_rgb8
from pipeline.shard_format import IMAGE_EXTS, META_EXT, ShardEntry, dali_index, read_manifest, sample_key


def read_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Members of a tar grouped by key (the name before the first dot): {key: {ext: data}}, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if not member.isreg():
                continue
            key, _, ext = member.name.partition(".")
            data = archive.extractfile(member)
            if data is not None:  # a regular member always has its bytes
                samples.setdefault(key, {})[ext] = data.read()
    return samples


def check_sample(name: str, key: str, members: dict[str, bytes]) -> list[str]:
    """Problems of one sample: member set, metadata, and the image's mode, size and decodability."""
    images = [ext for ext in members if ext in IMAGE_EXTS]
    if len(images) != 1 or META_EXT not in members or len(members) != 2:
        return [f"{name}: sample {key} has members {sorted(members)}, expected one of {IMAGE_EXTS} plus {META_EXT}"]
    try:
        meta = json.loads(members[META_EXT])
        data = members[images[0]]
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
        height, width, channels = decode_rgb8(data).shape
    except (ValueError, OSError) as err:
        return [f"{name}: sample {key} does not decode: {err}"]
    problems = []
    if mode != "RGB":
        problems.append(f"{name}: sample {key} is stored as {mode}, not 8-bit RGB")
    if (width, height) != (meta.get("width"), meta.get("height")) or channels != 3:
        problems.append(
            f"{name}: sample {key} is {width}x{height}, metadata says {meta.get('width')}x{meta.get('height')}"
        )
    if meta.get("key") != key:
        problems.append(f"{name}: sample {key} metadata has key {meta.get('key')}")
    return problems


def check_shard(folder: Path, entry: ShardEntry) -> tuple[list[str], list[str]]:
    """Problems of one shard and the keys it holds."""
    name, path = entry["name"], folder / entry["name"]
    if not path.is_file():
        return [f"{name}: missing"], []
    data = path.read_bytes()
    problems = []
    if len(data) != entry["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest (corrupted or replaced)")
    try:
        samples = read_samples(path)
        index = dali_index(path)
    except (tarfile.TarError, OSError, ValueError) as err:
        return [*problems, f"{name}: not a readable tar: {err}"], []
    first = int(entry["first_key"])
    expected = [sample_key(first + i) for i in range(entry["samples"])]
    if list(samples) != expected:
        problems.append(f"{name}: {len(samples)} samples, keys differ from the manifest's {entry['samples']}")
    for key, members in samples.items():
        problems += check_sample(name, key, members)
    index_path = folder / entry["index"]
    if not index_path.is_file():
        problems.append(f"{entry['index']}: missing DALI index")
    elif index_path.read_text() != index:
        problems.append(f"{entry['index']}: does not match {name} (rebuild it, e.g. with wds2idx)")
    return problems, list(samples)


def verify(folder: str | Path) -> list[str]:
    """All problems found in a shard folder; an empty list means it is sound."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems: list[str] = []
    seen: dict[str, str] = {}
    if not manifest["shards"]:
        problems.append("manifest: lists no shards (an empty pack): repack a folder that holds images")
    for entry in manifest["shards"]:
        shard_problems, keys = check_shard(folder, entry)
        problems += shard_problems
        for key in keys:
            if key in seen:
                problems.append(f"{entry['name']}: key {key} also in {seen[key]}")
            seen[key] = entry["name"]
    listed = {entry["name"] for entry in manifest["shards"]}
    problems += [
        f"{path.name}: tar not listed in the manifest"
        for path in sorted(folder.glob("*.tar"))
        if path.name not in listed
    ]
    for split, info in manifest["splits"].items():
        entries = [entry for entry in manifest["shards"] if entry["split"] == split]
        if info["samples"] != sum(entry["samples"] for entry in entries) or info["shards"] != len(entries):
            problems.append(f"manifest: split {split} totals disagree with its shard entries")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check a shard folder against its manifest.")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    problems = verify(args.folder)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    if problems:
        sys.exit(f"{args.folder}: {len(problems)} problem(s)")
    manifest = read_manifest(args.folder)
    samples = sum(entry["samples"] for entry in manifest["shards"])
    print(f"{args.folder}: OK, {len(manifest['shards'])} shards, {samples} samples")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m shards.verify"))
