"""`python -m infer INPUT... --out DIR`: restore image files with a trained model, tiled when they do not fit.

Exit status: 0 when every input was restored (or skipped with --skip-existing), 1 when some input failed (each one
is reported, the others are still written), 2 for unusable options or model files.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from infer.backends import PRECISIONS, RUNTIMES, Backend, open_backend, set_cpu_threads
from infer.files import (
    Job,
    Loaded,
    already_done,
    check_out_dir,
    collect_inputs,
    describe_error,
    plan_outputs,
    read_image,
    source_tag,
    write_png,
)
from infer.stats import stats_plan
from infer.tiling import DEFAULT_OVERLAP, check_tile, restore
from model import SHIPPED_MODEL
from model.condition import encode_condition
from pipeline.command import one_line
from pipeline.io import to_rgb8_array, to_tensor
from pipeline.progress import Bar, progress

EPILOG = """examples:
  python -m infer photo.jpg --out restored/
  python -m infer albums/ 'scans/**/*.tif' --out restored/ --skip-existing --batch 4
  python -m infer noisy.png --out out/ --sigma 25 --quality 40   # the strength control (models that have it)
  python -m infer noisy.png --out out/ --ensemble                 # the mean over 8 flips and turns, 8x the time

Outputs are PNG (lossless), named after the input, with the input's ICC profile and EXIF (orientation reset:
the pixels are already upright). Folder structure under a directory argument (or a glob's fixed prefix) is kept.
Without --model, the shipped model runs through the fastest runtime available on the device (said on the first
line). Without --tile, an image is restored whole when it fits the memory limit, else in tiles blended without
seams, which share whole-image pooling statistics (--stats). A second bar shows the tiles of a large image.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infer",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--model",
        type=Path,
        help=f"checkpoint, TorchScript, ONNX or TensorRT file (default: the shipped model, now {SHIPPED_MODEL.name})",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="for the shipped model or an ONNX file (auto: the fastest available here)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: the cores this process may use)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=sorted(PRECISIONS),
        help="fp16/bf16 fall back to fp32 if an output fails a check; MPS runs fp32 only",
    )
    parser.add_argument(
        "--tile",
        type=int,
        help="tile size in pixels (a multiple of the model's stride); "
        "default: the whole image if it fits in memory, else the largest tile that fits",
    )
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="tile overlap in pixels")
    parser.add_argument("--stats", default="auto", help="tiles' pooling statistics: auto, local, sample:K, passes:N")
    parser.add_argument("--sigma", type=float, help="noise sigma (0-255 scale) to remove: conditioned models only")
    parser.add_argument(
        "--quality",
        type=int,
        help="JPEG quality (1-100, 100 = no JPEG) the input was saved at: "
        "conditioned models only; a value left out is estimated by the model",
    )
    parser.add_argument("--ensemble", action="store_true", help="mean over the 8 flips and quarter turns (8x the time)")
    parser.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    parser.add_argument("--batch", type=int, default=1, help="restore up to N equal-sized images per forward pass")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pairs, failures = collect_inputs(args.inputs)
    try:
        check_out_dir(args.out, pairs, args.inputs)  # before the model opens: nothing runs for outputs that fail
        backend, condition = _open(args)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    jobs, notes = plan_outputs(pairs, args.out)
    todo = [job for job in jobs if not (args.skip_existing and already_done(job, args.out))]
    for line in [f"note: {note}" for note in notes] + [f"failed: {failure}" for failure in failures]:
        print(line, file=sys.stderr)
    written = 0
    with progress(len(todo), "restoring", unit="img", position=0) as bar:
        for job, message in _run(backend, todo, args, condition, bar):
            if message is None:
                written += 1
                continue
            failures.append(f"{job.source}: {message}")
            bar.write(f"failed: {job.source}: {message}", file=sys.stderr)
    for note in dict.fromkeys(backend.notes):
        print(f"warning: {note}", file=sys.stderr)
    skipped = len(jobs) - len(todo)
    print(f"{written} written, {skipped} skipped (output already there), {len(failures)} failed; in {args.out}")
    if failures:
        print("failures:\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1 if failures else 0


def _open(args: argparse.Namespace) -> tuple[Backend, torch.Tensor | None]:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.sigma is not None and not 0 <= args.sigma <= 255:
        raise ValueError(f"--sigma must be in 0-255, got {args.sigma}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be in 1-100 (100 = no JPEG), got {args.quality}")
    threads = set_cpu_threads(args.threads)
    backend = open_backend(args.model, args.device, args.precision, args.runtime)
    if args.tile is not None:
        check_tile(args.tile, backend.stride, args.overlap)
    stats_plan(backend, args.stats)  # an unknown --stats fails here, before any file is read
    which = "the shipped model, model.SHIPPED_MODEL" if args.model is None else "--model"
    where = f"{backend.device}, {backend.precision}" + (f", {threads} threads" if backend.device.type == "cpu" else "")
    print(f"model: {args.model or SHIPPED_MODEL} ({which}); {backend.name} on {where}")
    if backend.chosen:
        print(f"runtime: {backend.chosen}")
    if args.ensemble:
        print(f"ensemble: the 8 flips and quarter turns of each input, each through {backend.name} (8x the time)")
    if args.sigma is None and args.quality is None:
        return backend, None
    if not backend.conditioned:
        raise ValueError(
            f"--sigma/--quality set the strength of a conditioned model, but {backend.name} is blind (it always "
            "estimates the degradation itself): drop these options or use a conditioned model"
        )
    return backend, encode_condition(1, args.sigma, args.quality)


def _run(
    backend: Backend, jobs: list[Job], args: argparse.Namespace, condition: torch.Tensor | None, bar: Bar
) -> Iterator[tuple[Job, str | None]]:
    """Restore and write every job, batching equal sizes; yields `(job, None)` when written, else the reason."""
    pending: dict[tuple[int, int], list[tuple[Job, Loaded]]] = {}
    for job, loaded, error in _prefetch(jobs, ahead=2 * args.batch):
        if error is not None:
            bar.update(1)
            yield job, describe_error(error)
            continue
        for note in loaded.notes:  # e.g. only the first frame of an animation, 16 bits reduced to 8
            bar.write(f"note: {job.source}: {note}", file=sys.stderr)
        group = pending.setdefault(loaded.rgb8.shape[:2], [])
        group.append((job, loaded))
        if len(group) >= args.batch or sum(map(len, pending.values())) >= 4 * args.batch:
            key = loaded.rgb8.shape[:2] if len(group) >= args.batch else max(pending, key=lambda k: len(pending[k]))
            yield from _flush(backend, pending.pop(key), args, condition, bar)
    for group in pending.values():
        yield from _flush(backend, group, args, condition, bar)


def _flush(
    backend: Backend,
    group: list[tuple[Job, Loaded]],
    args: argparse.Namespace,
    condition: torch.Tensor | None,
    bar: Bar,
) -> Iterator[tuple[Job, str | None]]:
    degraded = torch.stack([to_tensor(loaded.rgb8) for _, loaded in group])  # (N, 3, H, W)
    rows = None if condition is None else condition.expand(len(group), -1)
    height, width = degraded.shape[-2:]
    try:
        with TileBar(len(group) * height * width, group[0][0].source.name) as tiles:
            restored = restore(
                backend,
                degraded,
                args.tile,
                args.overlap,
                rows,
                stats=args.stats,
                progress=tiles,
                ensemble=args.ensemble,
            )
    except (RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory: these inputs fail, the others go on
        bar.update(len(group))
        for job, _ in group:
            yield job, f"restoration failed: {err}"
        return
    for (job, loaded), image in zip(group, restored, strict=True):
        try:
            tag = source_tag(job, args.out)
            write_png(to_rgb8_array(image), job.output, loaded.icc_profile, loaded.exif, tag)
        except OSError as err:
            bar.update(1)
            yield job, f"cannot write {job.output}: {err.strerror or err}"
            continue
        bar.update(1)
        yield job, None


class TileBar:
    """`progress(done, total)` for `restore`: a second bar (tiles done, ETA, MPix/s) shown while an image is tiled."""

    def __init__(self, pixels: int, name: str) -> None:
        self.pixels, self.name, self.bar, self.start = pixels, name, None, time.perf_counter()

    def __enter__(self) -> TileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress(total, f"  {self.name[:40]}", unit="tile", leave=False, position=1)
        elapsed_s = time.perf_counter() - self.start
        if done and elapsed_s > 0:  # the tiles cover the image once per pass: MPix/s of finished image
            self.bar.set_postfix_str(f"{self.pixels * done / total / 1e6 / elapsed_s:.2f} MPix/s")
        self.bar.update(done - self.bar.n)


def _prefetch(jobs: list[Job], ahead: int) -> Iterator[tuple[Job, Loaded | None, Exception | None]]:
    """Decode the next `ahead` inputs in a thread while the model runs; a failed read is yielded with its error."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        queue: deque[tuple[Job, Future]] = deque()
        remaining = iter(jobs)
        for job in remaining:
            queue.append((job, pool.submit(read_image, job.source)))
            if len(queue) >= ahead:
                break
        while queue:
            job, future = queue.popleft()
            following = next(remaining, None)
            if following is not None:
                queue.append((following, pool.submit(read_image, following.source)))
            try:
                yield job, future.result(), None
            except Exception as err:  # any decoder failure of one file must not stop the batch
                yield job, None, err
