"""A split's images back out as files: `python -m shards.unpack SHARDS OUT [--split val]`.

The held-out split is where choices are made, and `python -m evaluate --data` reads folders of images: this writes
each sample's stored bytes (the source JPEG as it was, or the lossless PNG) at its source path under OUT, so each
collection of a multi-source pack gets a folder of its own (`OUT/CBSD432`, `OUT/ImageNetSample`). Nothing is
re-encoded. The paths come from the shards' metadata, which is not trusted: one that would leave OUT is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path, PurePosixPath

from pipeline.command import run_command
from pipeline.shard_format import IMAGE_EXTS, META_EXT, split_shards
from shards.verify import read_samples
from shards.writer import atomic_write


def target_path(out: Path, source: object, ext: str) -> Path:
    """Where a sample of `source` (a relative POSIX path from the metadata) is written, with its stored format's
    suffix; ValueError for a path that is absolute, climbs out of OUT or is not a string."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"metadata source {source!r} is not a path")
    rel = PurePosixPath(source)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts) or "\\" in source:
        raise ValueError(f"metadata source {source!r} would be written outside the output folder")
    return out.joinpath(*rel.parts).with_suffix(f".{ext}")


def sample_files(shard: Path, out: Path) -> list[tuple[Path, bytes]]:
    """(target path, stored image bytes) of every sample of one shard."""
    files = []
    for key, members in read_samples(shard).items():
        images = [ext for ext in members if ext in IMAGE_EXTS]
        if META_EXT not in members or len(images) != 1:
            raise ValueError(f"{shard.name}: sample {key} lacks its image or its metadata")
        try:
            meta = json.loads(members[META_EXT])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{shard.name}: sample {key} metadata is not JSON ({err})") from None
        source = meta.get("source") if isinstance(meta, dict) else None
        files.append((target_path(out, source, images[0]), members[images[0]]))
    return files


def unpack(folder: str | Path, out: str | Path, split: str = "val") -> list[Path]:
    """Write every image of `split` under `out`; returns the paths written. The whole split is read and checked
    before the first file is written (it is read twice rather than held in memory), so damaged shards leave
    nothing half done. Existing files are never replaced."""
    out, shards = Path(out), split_shards(folder, split)
    targets = [path for shard in shards for path, _ in read_shard(shard, out)]
    seen: set[Path] = set()
    for path in targets:
        if path in seen or path.exists():
            raise FileExistsError(f"{path} exists or is the target of two samples: unpack into an empty folder")
        seen.add(path)
    for shard in shards:
        for path, data in read_shard(shard, out):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
    return targets


def read_shard(shard: Path, out: Path) -> list[tuple[Path, bytes]]:
    """`sample_files`, with an unreadable tar named in one line."""
    try:
        return sample_files(shard, out)
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{shard.name}: not a readable tar ({err}): repack with `python -m shards.pack`") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a split's images back out as files, at their source paths.")
    parser.add_argument("folder", type=Path, help="a shard folder (python -m shards.pack)")
    parser.add_argument("out", type=Path, help="the folder to write into (files there are never replaced)")
    parser.add_argument("--split", default="val", help="the split to write (default val: the held-out images)")
    args = parser.parse_args(argv)
    written = unpack(args.folder, args.out, args.split)
    folders = sorted({str(path.parent) for path in written})
    print(f"{args.folder} {args.split}: {len(written)} images written into {', '.join(folders)}")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m shards.unpack"))
