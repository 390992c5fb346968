"""Which image format should shards store? `python -m bench.shard_format --src DIR --out FILE.json`.

For every image of DIR (clean JPEGs, e.g. CBSD432) it builds the shard payload four ways: the source JPEG bytes as
they are, lossless PNG at compress_level 1 and 6, and raw pixels (.npy). For each it reports the tar bytes, the
seconds to produce the payloads (one process), and decode throughput (images/s, MPix/s) with Pillow in one process
and with DALI's CPU decoder (`fn.decoders.image(device="cpu")`, CPU-only pipeline) where DALI can decode the format.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from pipeline.io import decode_rgb8, load_rgb8
from pipeline.shard_format import SOURCE_SUFFIXES
from shards.writer import tar_bytes


def encode_png(level: int) -> Callable[[bytes], bytes]:
    def encode(source: bytes) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(load_rgb8(source)).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def encode_npy(source: bytes) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, load_rgb8(source))
    return buffer.getvalue()


FORMATS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "source_jpeg": ("jpg", lambda source: source),
    "png_level1": ("png", encode_png(1)),
    "png_level6": ("png", encode_png(6)),
    "npy": ("npy", encode_npy),
}


def time_pillow(payloads: list[bytes], ext: str) -> float:
    """Seconds to decode every payload to (H, W, 3) uint8 in this process."""
    start = time.perf_counter()
    for data in payloads:
        np.load(io.BytesIO(data)) if ext == "npy" else decode_rgb8(data)
    return time.perf_counter() - start


def time_dali(payloads: list[bytes], threads: int, batch_size: int = 32) -> float | None:
    """Seconds for DALI's CPU decoder to decode every payload once (after a warm-up batch); None without DALI."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    arrays = [np.frombuffer(data, dtype=np.uint8) for data in payloads]
    batches = [arrays[i : i + batch_size] for i in range(0, len(arrays), batch_size)]
    batches[-1] = (batches[-1] * batch_size)[:batch_size]  # a fixed batch size: pad the last one
    state = {"next": 0}

    def next_batch() -> list[np.ndarray]:
        batch = batches[state["next"] % len(batches)]
        state["next"] += 1
        return batch

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, prefetch_queue_depth=1)
    def decode_pipeline():
        encoded = fn.external_source(source=next_batch, batch=True, dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = decode_pipeline()
    pipe.build()
    pipe.run()
    start = time.perf_counter()
    for _ in range(len(batches)):
        pipe.run()
    return (time.perf_counter() - start) * len(arrays) / (len(batches) * batch_size)


def measure(sources: list[bytes], megapixels: float, threads: int) -> dict:
    """One row per stored format."""
    rows = {}
    for name, (ext, encode) in FORMATS.items():
        start = time.perf_counter()
        payloads = [encode(source) for source in sources]
        pack_s = time.perf_counter() - start
        shard = tar_bytes([(f"{i:07d}.{ext}", data) for i, data in enumerate(payloads)])
        pillow_s = time_pillow(payloads, ext)
        dali_s = None if ext == "npy" else time_dali(payloads, threads)
        rows[name] = {
            "shard_bytes": len(shard),
            "pack_s": round(pack_s, 3),
            "pillow_img_per_s": round(len(payloads) / pillow_s, 1),
            "pillow_mpix_per_s": round(megapixels / pillow_s, 1),
            "dali_cpu_img_per_s": None if dali_s is None else round(len(payloads) / dali_s, 1),
            "dali_cpu_mpix_per_s": None if dali_s is None else round(megapixels / dali_s, 1),
        }
        print(name, rows[name], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure shard bytes, pack time and decode speed per image format.")
    parser.add_argument("--src", type=Path, required=True, help="folder of clean images")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--dali-threads", type=int, default=1)
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.src.rglob("*") if p.suffix.lower() in SOURCE_SUFFIXES)
    sources = [p.read_bytes() for p in paths]
    megapixels = float(sum(np.prod(Image.open(io.BytesIO(s)).size) for s in sources)) / 1e6
    rows = measure(sources, megapixels, args.dali_threads)
    result = {
        "src": str(args.src),
        "images": len(sources),
        "megapixels": round(megapixels, 2),
        "pillow": PIL.__version__,
        "dali_threads": args.dali_threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "formats": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
