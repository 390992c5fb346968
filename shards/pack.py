"""Pack folder trees of clean images into WebDataset shards: `python -m shards.pack SRC [SRC ...] OUT`.

Each source folder is listed recursively and sorted, shuffled with the seed, validated and normalised
(`shards.encode`, optionally box-downscaled) and split into train/val on its own, so a source's held-out images stay
the same when other sources join it. The train samples of all sources are then shuffled together (DALI's reader
shuffles only inside its `initial_fill` buffer, so shards must be pre-shuffled), cut into shards
(`shards.writer.plan_shards`) and indexed for DALI. Unusable images and entries that cannot be read are skipped and
listed in the manifest with a reason, files not named like images are listed as ignored; nothing is dropped
silently. A source with no usable image is refused (exit 1) with what was found there.

The new pack is built in a sibling folder and swapped in only when complete: a refused or interrupted re-pack
leaves the previous shards as they were.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

from pipeline.command import run_command
from pipeline.io import DEFAULT_MAX_PIXELS
from pipeline.scan import scan_folder
from pipeline.shard_format import (
    FORMAT_VERSION,
    MANIFEST,
    SOURCE_SUFFIXES,
    STORE_RULE,
    Manifest,
    ShardEntry,
    SplitTotals,
    read_manifest,
    sample_key,
    shard_name,
)
from shards.encode import PNG_COMPRESS_LEVEL, Encoded, Skipped, encode_file, meta_bytes
from shards.writer import atomic_write, member_bytes, plan_shards, write_shard

SPOOL = ".pack-spool"


def tool_version() -> str:
    """The installed package version, or 'unknown' when running from an uninstalled tree."""
    try:
        return version("ml-restoration")
    except PackageNotFoundError:
        return "unknown"


def scan_sources(src: Path) -> tuple[list[str], list[str], list[dict]]:
    """Image files under `src` (relative POSIX paths, sorted), the other files (ignored, named), and a skipped entry
    for each thing that cannot be read at all (dangling symlink, symlink loop, unlistable folder)."""
    scan = scan_folder(src, skip=(SPOOL,))
    images = [path.relative_to(src).as_posix() for path in scan.images]
    others = [path.relative_to(src).as_posix() for path in scan.others]
    unusable = [
        {"path": _relative(path, src), "reason": "unreadable_entry", "detail": why} for path, why in scan.unusable
    ]
    return images, others, unusable


def _relative(path: Path, src: Path) -> str:
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return str(path)


def encode_all(src: Path, sources: list[str], min_side: int, max_pixels: int, downscale: int, workers: int) -> Iterator:
    """Encode files in the given order (a process pool when workers > 1; results keep the order)."""
    job = partial(_encode_one, src=src, min_side=min_side, max_pixels=max_pixels, downscale=downscale)
    if workers <= 1:
        yield from map(job, sources)
        return
    # Not fork: a process that already runs threads (torch, onnxruntime, OpenVINO) can hand a forked worker a lock
    # held by a thread that does not exist there, and the worker waits forever. A fork server is a clean process.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(job, sources, chunksize=4)


def _encode_one(source: str, src: Path, min_side: int, max_pixels: int, downscale: int) -> Encoded | Skipped:
    return encode_file(src / source, source, min_side, max_pixels, downscale)


def spool_samples(
    results: Iterator, total: int, spool: Path, prefix: str = "", first: int = 0
) -> tuple[list[dict], list[dict]]:
    """Write encoded payloads to the spool folder, numbered from `first`; return kept sample records and skipped
    entries, in order. `prefix` (a source's name when several are packed) is put before each source path."""
    kept: list[dict] = []
    skipped: list[dict] = []
    start = last_report = time.perf_counter()
    for done, result in enumerate(results, 1):
        if isinstance(result, Skipped):
            skipped.append({"path": prefix + result.path, "reason": result.reason, "detail": result.detail})
        else:
            payload = spool / f"{first + len(kept):07d}.{result.ext}"
            payload.write_bytes(result.data)
            meta = result.meta | {"source": prefix + result.meta["source"]}
            kept.append({"payload": payload, "ext": result.ext, "meta": meta, "bytes": len(result.data)})
        now = time.perf_counter()
        if now - last_report >= 1.0 or done == total:
            rate = done / max(now - start, 1e-9)
            print(f"pack: {done}/{total} images, {rate:.1f} img/s, {len(skipped)} skipped", file=sys.stderr)
            last_report = now
    return kept, skipped


def split_samples(kept: list[dict], val_fraction: float) -> dict[str, list[dict]]:
    """Val takes the first samples of the shuffled order: round(n * fraction), at least 1 when n >= 2."""
    count = len(kept)
    val_count = 0
    if val_fraction > 0 and count >= 2:
        val_count = min(max(round(count * val_fraction), 1), count - 1)
    return {"train": kept[val_count:], "val": kept[:val_count]}


def write_split(
    out: Path, split: str, samples: list[dict], first_key: int, min_shards: int, max_bytes: int
) -> list[ShardEntry]:
    """Write the shards of one split; sample keys continue from `first_key`. Returns manifest shard entries."""
    for offset, sample in enumerate(samples):
        sample["meta"] = {**sample["meta"], "key": sample_key(first_key + offset), "split": split}
        sample["json"] = meta_bytes(sample["meta"])
    sizes = [member_bytes(s["bytes"]) + member_bytes(len(s["json"])) for s in samples]
    entries = []
    for index, rows in enumerate(plan_shards(sizes, min_shards, max_bytes)):
        members = []
        for sample in (samples[i] for i in rows):
            key = sample["meta"]["key"]
            members += [(f"{key}.{sample['ext']}", sample["payload"].read_bytes()), (f"{key}.json", sample["json"])]
        entry = write_shard(out, shard_name(split, index), members)
        extra = {"split": split, "samples": len(rows), "first_key": samples[rows[0]]["meta"]["key"]}
        entries.append(cast(ShardEntry, entry | extra))
    return entries


def pack(
    src: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    max_shard_mb: float = 256,
    min_shards: int = 8,
    min_side: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    downscale: int | list[int] = 1,
    workers: int = 1,
) -> Manifest:
    """Pack the images under `src` (one folder or several; `downscale` one factor for all or one per folder) into
    shards in `out`; return the manifest (also written to OUT/manifest.json)."""
    sources = [Path(folder) for folder in ([src] if isinstance(src, (str, Path)) else src)]
    factors = downscale if isinstance(downscale, list) else [downscale] * len(sources)
    if len(factors) != len(sources) or min(factors) < 1:
        raise ValueError(f"--downscale: one factor >= 1, or one per source ({len(sources)}), got {factors}")
    out = Path(out)
    check_previous(out)
    staging = out.with_name(f".{out.name}.packing")
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted pack left
    spool = staging / SPOOL
    spool.mkdir(parents=True)
    try:
        limits = (min_side, max_pixels, workers)
        splits, skipped, ignored = spool_sources(sources, factors, spool, seed, val_fraction, *limits)
        max_bytes = int(max_shard_mb * 2**20)
        shards = write_split(staging, "train", splits["train"], 0, min_shards, max_bytes)
        shards += write_split(staging, "val", splits["val"], len(splits["train"]), min_shards, max_bytes)
        shutil.rmtree(spool)
        args: dict[str, Any] = {"val_fraction": val_fraction, "seed": seed, "max_shard_mb": max_shard_mb}
        args |= {"min_shards": min_shards, "min_side": min_side, "max_pixels": max_pixels}
        args |= {"source": str(sources[0])} if len(sources) == 1 else {"sources": [str(f) for f in sources]}
        args |= {"downscale": factors[0] if len(set(factors)) == 1 else factors}
        formats = Counter(sample["ext"] for split in splits.values() for sample in split)
        image_format = {
            "rule": STORE_RULE,
            "png_compress_level": PNG_COMPRESS_LEVEL,
            "counts": dict(sorted(formats.items())),
        }
        tool = {"name": "shards.pack", "version": tool_version(), "format_version": FORMAT_VERSION}
        manifest = build_manifest(tool, args, image_format, splits, shards, skipped, ignored)
        atomic_write(staging / MANIFEST, (manifest_text(manifest)).encode())
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def spool_sources(
    sources: list[Path],
    factors: list[int],
    spool: Path,
    seed: int,
    val_fraction: float,
    min_side: int,
    max_pixels: int,
    workers: int,
) -> tuple[dict[str, list[dict]], list[dict], list[str]]:
    """Encode every source into the spool and split each on its own; the train samples of several sources are
    shuffled together. Returns the splits, the skipped entries and the ignored files."""
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    skipped: list[dict] = []
    ignored: list[str] = []
    for folder, factor in zip(sources, factors, strict=True):
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        prefix = f"{folder.name}/" if len(sources) > 1 else ""
        files, others, unusable = scan_sources(folder)
        random.Random(seed).shuffle(files)
        if not files:
            raise ValueError(f"{folder}: no image files to pack{_what_was_there(others, unusable)}")
        results = encode_all(folder, files, min_side, max_pixels, factor, workers)
        first = len(splits["train"]) + len(splits["val"])
        kept, bad = spool_samples(results, len(files), spool, prefix, first)
        bad += [entry | {"path": prefix + entry["path"]} for entry in unusable]
        if not kept:
            raise ValueError(f"{folder}: none of its {len(files)} image files can be used{_what_was_there([], bad)}")
        for split, samples in split_samples(kept, val_fraction).items():
            splits[split] += samples
        skipped += bad
        ignored += [prefix + name for name in others]
    if len(sources) > 1:
        random.Random(seed).shuffle(splits["train"])
    return splits, skipped, ignored


def _what_was_there(ignored: list[str], skipped: list[dict], show: int = 10) -> str:
    """`; skipped: A (reason: detail), ...; ignored (not images by name): B, ...` for an error message."""
    parts = []
    if skipped:
        listed = ", ".join(f"{e['path']} ({e['reason']}: {e['detail']})" for e in skipped[:show])
        parts.append(f"skipped: {listed}" + (f" and {len(skipped) - show} more" if len(skipped) > show else ""))
    if ignored:
        listed = ", ".join(ignored[:show]) + (f" and {len(ignored) - show} more" if len(ignored) > show else "")
        parts.append(f"ignored (not images by name, {', '.join(SOURCE_SUFFIXES)} expected): {listed}")
    return "".join(f"; {part}" for part in parts) if parts else " (the folder is empty)"


def build_manifest(
    tool: dict,
    args: dict,
    image_format: dict,
    splits: dict[str, list[dict]],
    shards: list[ShardEntry],
    skipped: list[dict],
    ignored: list[str],
) -> Manifest:
    """The manifest: tool, creation args, stored format, per-split totals, per-shard entries, skipped inputs."""
    totals: dict[str, SplitTotals] = {}
    for split, samples in splits.items():
        if not samples:
            continue
        entries = [entry for entry in shards if entry["split"] == split]
        totals[split] = SplitTotals(
            samples=len(samples),
            shards=len(entries),
            bytes=sum(entry["bytes"] for entry in entries),
            min_width=min(sample["meta"]["width"] for sample in samples),
            min_height=min(sample["meta"]["height"] for sample in samples),
        )
    return Manifest(
        tool=tool,
        args=args,
        image_format=image_format,
        shuffled=True,
        seed=args["seed"],
        splits=totals,
        shards=shards,
        skipped=sorted(skipped, key=lambda entry: entry["path"]),
        ignored_files=len(ignored),
        ignored=ignored,
    )


def check_previous(out: Path) -> None:
    """Refuse an `out` that is a file, or a folder holding anything but an earlier pack's files."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a shard folder")
    if not out.exists():
        return
    names = {MANIFEST}
    if (out / MANIFEST).is_file():
        for entry in read_manifest(out)["shards"]:
            names |= {entry["name"], entry["index"]}
    leftovers = [p.name for p in out.iterdir() if p.name not in names]
    if leftovers:
        raise FileExistsError(f"{out} holds files that are not from an earlier pack: {sorted(leftovers)[:5]}")


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by the complete pack in `staging`: two renames, the old pack removed last."""
    retired = out.with_name(f".{out.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if out.exists():
        os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest, indent=1) + "\n"


def print_summary(manifest: Manifest, seconds: float, show: int = 20) -> None:
    """One line per split, the first skipped files with their reasons, then skip counts by reason."""
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['samples']} samples in {info['shards']} shards, {info['bytes'] / 2**20:.1f} MiB")
    for entry in manifest["skipped"][:show]:
        print(f"skipped {entry['path']}: {entry['reason']} ({entry['detail']})", file=sys.stderr)
    if len(manifest["skipped"]) > show:
        print(f"... {len(manifest['skipped']) - show} more skipped files listed in {MANIFEST}", file=sys.stderr)
    reasons = dict(sorted(Counter(entry["reason"] for entry in manifest["skipped"]).items()))
    ignored = manifest.get("ignored", [])
    for path in ignored[:show]:
        print(f"ignored {path}: not named like an image ({', '.join(SOURCE_SUFFIXES)})", file=sys.stderr)
    if len(ignored) > show:
        print(f"... {len(ignored) - show} more ignored files listed in {MANIFEST}", file=sys.stderr)
    print(f"skipped {len(manifest['skipped'])} {reasons}, ignored {len(ignored)} non-image files, {seconds:.1f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pack a folder of clean images into WebDataset tar shards.")
    parser.add_argument("src", type=Path, nargs="+", help="folders of images (searched recursively)")
    parser.add_argument("out", type=Path, help="output shard folder (empty, or a previous shard folder)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-mb", type=float, default=256)
    parser.add_argument("--min-shards", type=int, default=8, help="per split, when it has that many samples")
    parser.add_argument("--min-side", type=int, default=64, help="skip images whose shorter side is below this")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb guard")
    parser.add_argument(
        "--downscale", type=_factors, default=[1], help="box-downscale by k: one k, or one per source (1,2)"
    )
    parser.add_argument("--workers", type=int, default=1, help="decode/encode processes")
    return parser.parse_args(argv)


def _factors(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        options = {k: v for k, v in vars(args).items() if k not in ("src", "out", "downscale")}
        downscale = args.downscale if len(args.downscale) > 1 else args.downscale[0]
        manifest = pack(args.src, args.out, downscale=downscale, **options)
    except (ValueError, NotADirectoryError, FileExistsError) as err:
        sys.exit(f"shards.pack: {err}")
    print_summary(manifest, time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m shards.pack"))
