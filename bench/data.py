"""The data path stage by stage: `python -m bench data --shards DIR [--out FILE.json] [options]`.

Stages, each timed alone after a warm-up, then together: read (tar bytes), decode (Pillow or pillow-simd, whichever
is installed; DALI's CPU decoder where installed), crop/augment, degrade (`bench.degradation.compare`: Pillow/libjpeg
on one core and on a pool of all cores, and the batched device op), and the loaders end to end with and without the
device degradation. `--formats SRC` instead compares the stored formats a shard could hold for the images of SRC
(source JPEG bytes, PNG at compress level 1 and 6, raw .npy): tar bytes, seconds to produce the payloads, decode
img/s and MPix/s with Pillow in one process and with DALI's CPU decoder where it can decode the format.
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL
import torch
import webdataset as wds
from PIL import Image

from bench import machine, measure, repeat_times, save, table, timed
from bench.degradation import compare
from pipeline.config import DegradeConfig, LoaderConfig
from pipeline.degrade import sample_and_degrade
from pipeline.io import decode_rgb8, load_rgb8
from pipeline.loader import dali_available, make_loader
from pipeline.loader_torch import cut
from pipeline.shard_format import IMAGE_EXTS, SOURCE_SUFFIXES, read_manifest, split_shards
from pipeline.stream import crop_params
from shards.writer import tar_bytes


def backend_ready(backend: str) -> str:
    """ "" when loader `backend` can run here, else why not (DALI: not installed, or installed but not importable)."""
    if backend == "torch":
        return ""
    if backend != "dali":
        return f"unknown loader backend '{backend}'"
    if not dali_available():
        return "NVIDIA DALI is not installed (pip install -e .[dali])"
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401 (the import is the check)
    except Exception as err:  # a broken DALI install must be reported, not crash the benchmark
        return f"NVIDIA DALI does not import: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return ""


def _row(stage: str, rate: dict, note: str = "") -> dict:
    return {"stage": stage, "img_per_s": rate["img_per_s"], "mpix_per_s": rate["mpix_per_s"], "note": note} | rate


def _read_through(path: str, chunk: int = 1 << 22) -> int:
    """Read a file in 4 MiB chunks (no whole-file buffer); returns the bytes read."""
    total = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            total += len(block)
    return total


def stages(shards: Path, device: torch.device, patch: int, batch: int, repeats: int, limit: int) -> list[dict]:
    """Read, decode, crop and degrade, each alone (rows of `bench.measure` rates)."""
    urls = [str(p) for p in split_shards(shards, "train")]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=None)
    payloads = [next(s[e] for e in IMAGE_EXTS if e in s) for s in itertools.islice(dataset, limit)]
    images = [decode_rgb8(p) for p in payloads]
    pixels = float(np.mean([a.shape[0] * a.shape[1] for a in images]))
    samples = read_manifest(shards)["splits"]["train"]["samples"]
    pil_name = "pillow-simd" if ".post" in PIL.__version__ else "pillow"
    rows = [
        _row("read tar bytes", measure(lambda: [_read_through(u) for u in urls], samples, repeats, device, pixels)),
        _row(
            f"decode ({pil_name} {PIL.__version__})",
            measure(lambda: [decode_rgb8(p) for p in payloads], len(payloads), repeats, device, pixels),
        ),
    ]
    dali = dali_decoder(payloads, threads=os.cpu_count() or 1)
    if dali is not None:
        rows.append(_row("decode (DALI cpu, all cores)", measure(dali, len(payloads), repeats, device, pixels)))
    crops = 4

    def cut_all() -> None:
        for i, image in enumerate(images):
            cut(image, crop_params(0, i, 0, 0, crops), patch)

    rate = measure(cut_all, len(images) * crops, repeats, device, patch * patch)
    rows.append(_row(f"crop+flip+rot90 ({crops} x {patch}px per image)", rate))
    usable = [a[:patch, :patch] for a in images if min(a.shape[:2]) >= patch]
    if usable:
        patches = [np.ascontiguousarray(usable[i % len(usable)]) for i in range(batch)]
        found = compare(patches, ("auto",), repeats, device, pool=os.cpu_count() or 1, call_s=0.1)
        names = {"pillow": "Pillow/libjpeg, 1 core", "pillow_pool": f"Pillow/libjpeg, pool of {os.cpu_count()}"}
        names["auto"] = f"batched device op ({device.type}, batch {batch})"
        rows += [_row(f"degrade: {names[n]}", r, f"{torch.get_num_threads()} torch threads") for n, r in found.items()]
    return rows


def loader_ceiling(shards: Path, cfg: LoaderConfig, device: torch.device, steps: int, repeats: int, degrade=None):
    """Images/s of the loader alone (no model), or followed by the device degradation with `degrade`."""
    loader = make_loader(shards, "train", cfg, device)
    generator, host = torch.Generator(device).manual_seed(0), torch.Generator().manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            clean = next(loader)
            if degrade is not None:
                sample_and_degrade(clean, degrade, generator, 1.0, host)

    try:  # the warm-up call absorbs worker start-up
        return measure(run, steps * cfg.batch_size, repeats, device, cfg.patch_size**2)
    finally:
        loader.close()  # ends the DataLoader workers / DALI pipeline before the next measurement starts
        gc.collect()


def loaders(shards: Path, device: torch.device, cfg: LoaderConfig, steps: int, repeats: int, backends) -> list[dict]:
    """Each ready backend end to end (crops/s on the device); torch also followed by the device degradation."""
    rows = []
    for backend in [b for b in backends if not backend_ready(b)]:
        one = replace(cfg, backend=backend)
        rate = loader_ceiling(shards, one, device, steps, repeats)
        rows.append(_row(f"loader {backend} ({cfg.workers} workers) -> device", rate))
        if backend == "torch":
            rate = loader_ceiling(shards, one, device, steps, repeats, DegradeConfig(curriculum=False))
            rows.append(_row("loader torch + device degrade (together)", rate))
    return rows


def prepare_shards(shards: Path | None, out: Path, settings) -> Path:
    """The shards to benchmark: `shards` as given, else a synthetic set made once beside the output."""
    if shards is not None:
        if not (shards / "manifest.json").is_file():
            raise SystemExit(f"--shards {shards}: no manifest.json there (pack a folder with `python -m shards.pack`)")
        return shards
    synth_dir = out.parent / f"bench_shards_synth{settings.synth_count}"
    if not (synth_dir / "manifest.json").is_file():
        from shards.synth import synth

        print(f"generating {settings.synth_count} dead-leaves images into {synth_dir} (once)", flush=True)
        min_shards = max(8, max(settings.curve_workers, default=1))
        synth(synth_dir, settings.synth_count, size=256, workers=os.cpu_count() or 1, min_shards=min_shards)
    return synth_dir


def stages_markdown(rows: list[dict]) -> str:
    return table(rows, {"stage": "stage", "img/s": "img_per_s", "MPix/s": "mpix_per_s", "note": "note"})


def dali_decoder(payloads: list[bytes], threads: int, batch_size: int = 32) -> Callable[[], None] | None:
    """A call decoding every payload once with DALI's CPU decoder (whole batches: the last is padded); None
    without DALI."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    arrays = [np.frombuffer(data, dtype=np.uint8) for data in payloads]
    batches = [arrays[i : i + batch_size] for i in range(0, len(arrays), batch_size)]
    batches[-1] = (batches[-1] * batch_size)[:batch_size]  # a fixed batch size: pad the last one
    state = {"next": 0}

    def next_batch() -> list[np.ndarray]:
        state["next"] += 1
        return batches[(state["next"] - 1) % len(batches)]

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, prefetch_queue_depth=1)
    def decode_pipeline():
        encoded = fn.external_source(source=next_batch, batch=True, dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = decode_pipeline()
    pipe.build()

    def decode_all() -> None:
        for _ in range(len(batches)):
            pipe.run()

    return decode_all


def _png(level: int):
    def encode(source: bytes) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(load_rgb8(source)).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def _npy(source: bytes) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, load_rgb8(source))
    return buffer.getvalue()


FORMATS = {"source_jpeg": ("jpg", lambda s: s), "png_level1": ("png", _png(1)), "png_level6": ("png", _png(6))}
FORMATS["npy"] = ("npy", _npy)


def formats(sources: list[bytes], threads: int) -> list[dict]:
    """One row per stored format (see the module docstring)."""
    megapixels = float(sum(np.prod(Image.open(io.BytesIO(s)).size) for s in sources)) / 1e6
    cpu = torch.device("cpu")
    rows = []
    for name, (ext, encode) in FORMATS.items():
        payloads: list[bytes] = []
        pack_s = timed(lambda out=payloads, encode=encode: out.extend(encode(source) for source in sources), cpu)
        shard = tar_bytes([(f"{i:07d}.{ext}", data) for i, data in enumerate(payloads)])
        decode = (lambda data: np.load(io.BytesIO(data))) if ext == "npy" else decode_rgb8
        pillow_s = timed(lambda stored=payloads, decode=decode: [decode(data) for data in stored], cpu)
        dali = None if ext == "npy" else dali_decoder(payloads, threads)
        dali_s = None if dali is None else repeat_times(dali, 1, cpu)[0]
        rows.append(
            {
                "format": name,
                "shard_bytes": len(shard),
                "pack_s": round(pack_s, 3),
                "pillow_img_per_s": round(len(payloads) / pillow_s, 1),
                "pillow_mpix_per_s": round(megapixels / pillow_s, 1),
                "dali_cpu_img_per_s": None if dali_s is None else round(len(payloads) / dali_s, 1),
                "dali_cpu_mpix_per_s": None if dali_s is None else round(megapixels / dali_s, 1),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, help="shard folder (the stages)")
    parser.add_argument("--formats", type=Path, metavar="SRC", help="folder of clean images: compare stored formats")
    parser.add_argument("--out", type=Path, default=None, help="FILE.json; FILE.md beside it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="loader batches per timed repeat")
    parser.add_argument("--limit", type=int, default=64, help="images used by the per-stage timings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: cores - workers // 2, as training)")
    parser.add_argument("--dali-threads", type=int, default=1, help="--formats: DALI decoder threads")
    args = parser.parse_args(argv)
    if args.formats is not None:
        paths = sorted(p for p in args.formats.rglob("*") if p.suffix.lower() in SOURCE_SUFFIXES)
        rows = formats([p.read_bytes() for p in paths], args.dali_threads)
        result = machine() | {"src": str(args.formats), "images": len(paths), "pillow": PIL.__version__, "rows": rows}
        save(result, args.out, table(rows, {k: k for k in rows[0]} if rows else {"format": "format"}))
        return 0
    if args.shards is None:
        parser.error("give --shards DIR (the stages) or --formats SRC")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.workers // 2))
    rows = stages(args.shards, device, args.patch, args.batch, args.repeats, args.limit)
    cfg = LoaderConfig(patch_size=args.patch, batch_size=args.batch, workers=args.workers)
    rows += loaders(args.shards, device, cfg, args.steps, args.repeats, ("torch", "dali"))
    result = machine(device) | {"shards": str(args.shards), "patch": args.patch, "batch": args.batch, "rows": rows}
    save(result | {"loader_workers": args.workers, "pillow": PIL.__version__}, args.out, stages_markdown(rows))
    return 0
