"""Download a public clean-image set and pack it: `python -m shards.fetch NAME OUT [--cache DIR]`.

Downloads resume with HTTP Range into `FILE.part` (an interrupted transfer is retried from where it stopped), the
size and checksum are checked before the file takes its final name (a file that fails the check is deleted, never
kept as valid), archives are unpacked (zip, tar), and the images are packed with `shards.pack.pack`.
Checksums come from public records (cited per entry); where none is published, `checksum` is None and the computed
sha256 is printed as unverified.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.command import run_command
from pipeline.shard_format import Manifest
from shards.pack import pack

CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A download whose size or digest is not the recorded one."""


@dataclass(frozen=True)
class Remote:
    """One file to download; `checksum` is "sha256:HEX" or "md5:HEX", or None where no record is published."""

    url: str
    filename: str
    checksum: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Source:
    """A named dataset: its files and whether they are archives to unpack."""

    name: str
    files: tuple[Remote, ...]
    archive: bool = True


KODAK_URL = "http://r0k.us/graphics/kodak/kodak/kodim{:02d}.png"
SOURCES = {
    # sha256 and size: tensorflow/datasets, tensorflow_datasets/datasets/div2k/checksums.tsv
    "div2k": Source(
        "div2k",
        (
            Remote(
                "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
                "DIV2K_train_HR.zip",
                "sha256:9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
                3530603713,
            ),
        ),
    ),
    # no published checksum found
    "bsds500": Source(
        "bsds500",
        (
            Remote(
                "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
                "BSR_bsds500.tgz",
            ),
        ),
    ),
    # md5 recorded identically by two public super-resolution dataset classes (catalyst-based `esrgan`, one more)
    "flickr2k": Source(
        "flickr2k",
        (
            Remote(
                "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar",
                "Flickr2K.tar",
                "md5:5d3f39443d5e9489bff8963f8f26cb03",
            ),
        ),
    ),
    # 24 loose PNGs, no published checksums found
    "kodak": Source("kodak", tuple(Remote(KODAK_URL.format(i), f"kodim{i:02d}.png") for i in range(1, 25)), False),
}


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch_part(url: str, part: Path, timeout_s: float) -> int | None:
    """Append the rest of `url` to `part` (Range from its current size); return the full size if the server says."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if have and response.status != 206:  # the server ignored the Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as handle:
            while block := response.read(CHUNK):
                handle.write(block)
    return total


def download(remote: Remote, folder: Path, attempts: int = 5, timeout_s: float = 60.0) -> Path:
    """Download one file into `folder` (resuming `.part` files), check size and checksum, return its path."""
    final, part = folder / remote.filename, folder / f"{remote.filename}.part"
    if final.exists():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    total = None
    for attempt in range(1, attempts + 1):
        try:
            total = fetch_part(remote.url, part, timeout_s) or total
        except (http.client.HTTPException, urllib.error.URLError, OSError) as err:
            print(f"fetch: {remote.filename}: attempt {attempt} stopped ({err}), resuming", file=sys.stderr)
            time.sleep(min(attempt - 1, 10))  # the first retry at once, then back off
            continue
        if total is None or part.stat().st_size >= total:
            break
        print(f"fetch: {remote.filename}: {part.stat().st_size}/{total} bytes, resuming", file=sys.stderr)
    else:
        raise ConnectionError(f"{remote.url}: incomplete after {attempts} attempts (kept {part} to resume)")
    check_file(remote, part)
    part.replace(final)
    return final


def check_file(remote: Remote, part: Path) -> None:
    """Raise ChecksumError (deleting the file) when size or checksum differ from the record."""
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise ChecksumError(f"{remote.filename}: {size} bytes, expected {remote.size}; deleted")
    if remote.checksum is None:
        print(f"fetch: {remote.filename}: UNVERIFIED (no published checksum), sha256 {file_digest(part, 'sha256')}")
        return
    algorithm, expected = remote.checksum.split(":", 1)
    actual = file_digest(part, algorithm)
    if actual != expected.lower():
        part.unlink()
        raise ChecksumError(f"{remote.filename}: {algorithm} {actual}, expected {expected}; the file was deleted")


def unpack(archive: Path, into: Path) -> None:
    """Extract a zip or tar archive (tar members are filtered: no absolute paths, links out, or devices)."""
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            handle.extractall(into, filter="data")
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")


def fetch(name: str, out: str | Path, *, cache: str | Path, source: Source | None = None, **pack_kwargs) -> Manifest:
    """Download (or reuse from `cache`), unpack and pack the dataset `name`; return the shard manifest."""
    source = source or SOURCES[name]
    cache = Path(cache) / source.name
    images = cache / "images"
    files = [download(remote, cache / "downloads") for remote in source.files]
    if images.exists():
        shutil.rmtree(images)
    for path in files:
        if source.archive:
            unpack(path, images)
        else:
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, images / path.name)
    return pack(images, out, **pack_kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Download a public image set, check it, and pack it into shards.")
    parser.add_argument("name", choices=sorted(SOURCES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("data/downloads"))
    parser.add_argument("--url", help="override the download URL (single-file sets only)")
    parser.add_argument("--sha256", help="override the expected sha256 (single-file sets only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    source = SOURCES[args.name]
    if args.url or args.sha256:
        if len(source.files) != 1:
            parser.error("--url/--sha256 apply to single-file sets only")
        remote = source.files[0]
        checksum = f"sha256:{args.sha256}" if args.sha256 else remote.checksum
        remote = replace(remote, url=args.url or remote.url, checksum=checksum, size=None if args.url else remote.size)
        source = replace(source, files=(remote,))
    try:
        manifest = fetch(args.name, args.out, cache=args.cache, source=source, seed=args.seed, workers=args.workers)
    except (ChecksumError, ConnectionError, urllib.error.URLError, ValueError) as err:
        sys.exit(f"fetch {args.name}: {err}")
    print({split: info["samples"] for split, info in manifest["splits"].items()})


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m shards.fetch"))
