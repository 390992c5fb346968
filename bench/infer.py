"""Inference speed and memory: `python -m bench infer [--quick] [--photo] --out FILE.json [options]`.

Raw forward passes (default) per backend (`BACKENDS`, those this machine runs; `--investigate` adds ONNX Runtime
variants) and square size (`--sizes` px, default 1024,2048). `--photo`: whole photos through `python -m infer`'s
path (`infer.tiling.restore`, its defaults) per runtime (`--runtimes`) and 4:3 size (`--sizes` MP, default
1,4,12); `--cli` also times the command itself on JPEGs (start-up, load, decode, PNG write); the FLOP-limited time
is MACs per MP / (threads x clock x 16 fp32 multiply-adds per core and cycle: two 256-bit FMA pipes).
Each measurement runs in a fresh child (`bench.child`): a warm-up call (`first_call_s`: torch.compile's compilation),
then one timed call; `--rounds` passes interleave the contenders; rows give medians. Memory: the peak RSS of the
timed call (high-water mark reset after the warm-up) less the RSS before; on CUDA, max_memory_allocated over it.
Writes FILE.json, FILE.md and, with --photo, FILE.png (s/MP against megapixels per runtime).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import child_rounds, draw, figure_axes, machine, measured_call, merge_runs, save, table, timed
from bench.env import clock_hz
from model import SHIPPED_MODEL, count_params, load_model, macs_per_megapixel

BACKENDS = {
    "eager": "PyTorch eager, NCHW",
    "channels_last": "PyTorch eager, channels_last model and input",
    "compile": "torch.compile (default mode), compiled for this size",
    "ort": "ONNX Runtime, CPU EP, opset 17, dynamic shapes, all graph optimisations",
    **{f"ort-opt-{level}": f"as ort, graph optimisation level {level}" for level in ("disable", "basic", "extended")},
    "ort-static": "as ort, graph exported with this fixed input shape",
    "ort-opset18": "as ort, opset 18 graph from the dynamo exporter",
    "openvino": "OpenVINO CPU plugin, f32 inference precision, reading the same ONNX file",
    "ort-cuda": "ONNX Runtime, CUDA EP (host input copied each call)",
    "ort-trt": "ONNX Runtime, TensorRT EP (host input copied each call)",
    "tensorrt-fp32": "TensorRT engine, fp32 (TF32 off), EngineRunner",
    "tensorrt-fp16": "TensorRT engine, fp16 with LayerNorm pinned to fp32, EngineRunner",
}
RUNTIMES = ("torch", "onnxruntime", "openvino")
MACS_PER_CYCLE = 16
GPU_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


def available_backends(device: str, investigate: bool) -> list[str]:
    """The backends this machine can run, in table order."""
    import onnxruntime as ort

    names = ["eager", "channels_last", "compile", "ort"] + ["openvino"] * bool(importlib.util.find_spec("openvino"))
    if investigate:
        names += [name for name in BACKENDS if name.startswith("ort-") and name not in GPU_PROVIDERS]
    if device == "cuda":
        names += [name for name, p in GPU_PROVIDERS.items() if p in ort.get_available_providers()]
        names += ["tensorrt-fp32", "tensorrt-fp16"] if importlib.util.find_spec("tensorrt") else []
    return names


def prepare_files(model_path: Path, work: Path, backends: list[str], sizes: list[int]) -> dict[str, str]:
    """Export the ONNX files (and engines) the chosen backends read; returns name -> path."""
    from export.onnx import export_onnx
    from export.parity import load_source

    source = load_source(model_path)
    files = {"onnx": str(work / "model.onnx")}
    export_onnx(source, files["onnx"])
    if "ort-opset18" in backends:
        files["onnx18"] = str(work / "model-opset18.onnx")
        export_onnx(source, files["onnx18"], opset=18)
    for size in sizes if "ort-static" in backends else []:
        files[f"onnx-static-{size}"] = str(work / f"model-{size}.onnx")
        export_onnx(source, files[f"onnx-static-{size}"], static_shape=(1, 3, size, size))
    for precision in [p for p in ("fp32", "fp16") if f"tensorrt-{p}" in backends]:
        from export.tensorrt import export_tensorrt
        from export.trt_plan import make_profile

        profile = make_profile((1, 3, 64, 64), (1, 3, min(sizes), min(sizes)), (1, 3, max(sizes), max(sizes)))
        files[f"engine-{precision}"] = str(work / f"model-{precision}.engine")
        export_tensorrt(files[f"engine-{precision}"], profile=profile, source=source, precision=precision)
    return files


def make_runner(spec: dict):
    """A no-argument callable running one restoration of a (1, 3, size, size) input with the spec's backend."""
    backend, size, device = spec["backend"], spec["size"], torch.device(spec["device"])
    degraded = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))  # (1, 3, H, W)
    if backend.startswith("ort"):
        from export.onnx import ort_session

        name = {"ort-static": f"onnx-static-{size}", "ort-opset18": "onnx18"}.get(backend, "onnx")
        level = backend.removeprefix("ort-opt-") if backend.startswith("ort-opt-") else "all"
        providers = [GPU_PROVIDERS[backend], "CPUExecutionProvider"] if backend in GPU_PROVIDERS else None
        runner = ort_session(spec["files"][name], threads=spec["threads"], level=level, providers=providers)
        return lambda: runner.run(["restored"], {"degraded": degraded.numpy()})
    if backend == "openvino":
        from infer.backend_openvino import OpenVinoBackend
        from infer.backends import set_cpu_threads

        set_cpu_threads(spec["threads"])
        vino = OpenVinoBackend(Path(spec["files"]["onnx"]))
        return lambda: vino(degraded)
    if backend.startswith("tensorrt"):
        from export.tensorrt import EngineRunner

        engine, degraded = EngineRunner(spec["files"]["engine-" + backend.split("-")[1]]), degraded.to(device)
        return lambda: engine(degraded)
    model, degraded = load_model(spec["model"]).to(device), degraded.to(device)
    if backend == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        degraded = degraded.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if backend == "compile" else model
    return lambda: forward(degraded)


def measure_child(spec: dict) -> dict:
    """One fresh-process measurement: warm up once, time one call, read the memory (see the module docstring)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("photo"):
        from infer.backends import open_backend, set_cpu_threads
        from infer.measure_tiling import CountingBackend
        from infer.tiling import restore

        set_cpu_threads(spec["threads"])
        backend = CountingBackend(open_backend(None, device="cpu", runtime=spec["runtime"]))
        height, width = photo_hw(spec["megapixels"])
        warm, degraded = torch.rand(1, 3, 256, 256), torch.rand(1, 3, height, width)  # (1, 3, H, W)
        warmup = lambda: [restore(backend, warm), setattr(backend, "pixels", 0)]  # noqa: E731 (count the photo only)
        run = lambda: restore(backend, degraded)  # noqa: E731
    else:
        run, height, width = make_runner(spec), spec["size"], spec["size"]
        warmup = run
    with torch.inference_mode():
        row = measured_call(warmup, run, device)
    row |= {
        "size": f"{width}x{height}",
        "mpix": height * width / 1e6,
        "s_per_mp": row["seconds"] / (height * width / 1e6),
    }
    if spec.get("photo"):
        return row | {"backend": backend.name, "passes": backend.pixels / (height * width)}
    row["note"] = BACKENDS[spec["backend"]] + ("" if row.pop("peak_reset") else "; peak RSS includes loading")
    if spec["backend"].startswith(("ort", "tensorrt")):  # their memory is not torch's allocator's
        row.pop("cuda_peak_delta_mib", None)
    return row


def photo_hw(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 photo of about `megapixels`, multiples of 8 (12 -> 3000 x 4000)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    return width * 3 // 4 // 8 * 8, width


def flop_limit_s_per_mp(macs_per_mp: float, threads: int) -> float:
    return macs_per_mp / (threads * clock_hz() * MACS_PER_CYCLE)


def run_cli(jpeg: Path, out: Path, threads: int) -> dict:
    """`python -m infer JPEG --out OUT` in a child: wall seconds and the child's peak RSS (ru_maxrss)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "infer", str(jpeg), "--out", str(out), "--threads", str(threads)]
    done: dict = {}

    def call() -> None:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        done.update(rc=os.waitstatus_to_exitcode(status), rss=usage.ru_maxrss / 1024)

    seconds = timed(call, torch.device("cpu"))
    height, width = photo_hw(float(jpeg.stem.split("-")[1].removesuffix("mp")))
    if done["rc"] != 0:
        return {"error": f"exit {done['rc']}"}
    return {"seconds": seconds, "s_per_mp": seconds / (height * width / 1e6), "peak_rss_mib": done["rss"]}


def write_jpeg(path: Path, megapixels: float) -> None:
    """A noisy photo-sized JPEG (smooth colour fields plus noise: speed does not depend on content)."""
    from PIL import Image

    height, width = photo_hw(megapixels)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fields = [128 + 100 * np.sin(x / (97 + 31 * c) + y / (131 + 17 * c)) for c in range(3)]
    rgb = np.stack(fields, axis=-1) + np.random.default_rng(0).normal(0, 20, (height, width, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=60)


def forward_markdown(rows: list[dict]) -> str:
    """Memory: the CUDA delta where measured, else the CPU peak RSS delta."""
    columns = {k: k for k in ("backend", "size", "median_ms", "ms_per_mpix", "vs_eager", "first_call_s")}
    columns["peak mem delta MiB"] = lambda r: r.get("cuda_peak_delta_mib", r.get("peak_rss_delta_mib", "-"))
    return table(rows, columns | {"note": lambda r: r.get("error", r.get("note", ""))})


def photo_markdown(rows: list[dict], limit: float) -> str:
    columns = {"runtime": "runtime", "MP": "megapixels", "size": "size", "s/MP (median)": "s_per_mp"}
    columns |= {"s/MP (min)": "min_s_per_mp", "x FLOP limit": "vs_flop_limit", "peak RSS MiB": "peak_rss_mib"}
    columns["model passes"] = lambda r: r.get("passes") or r.get("error", "-")
    return f"FLOP-limited time: {limit:.3f} s/MP (see bench/infer.py)\n\n" + table(rows, columns)


def plot(rows: list[dict], limit: float, path: Path) -> None:
    """s/MP against megapixels per runtime, with the FLOP limit."""
    good = [r for r in rows if "error" not in r]
    names = dict.fromkeys(r["runtime"] for r in good)
    lines = {name: sorted((r["megapixels"], r["s_per_mp"]) for r in good if r["runtime"] == name) for name in names}
    figure, axis = figure_axes(1, 1, (6, 4))
    draw(axis, lines, "photo size (MP)", "seconds per megapixel", "time per megapixel")
    axis.axhline(limit, color="grey", linestyle="--", label=f"FLOP limit ({limit:.2f} s/MP)")
    axis.set_ylim(0, None)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def photo(args: argparse.Namespace) -> tuple[dict, str]:
    """Rows per (runtime, size), rounds interleaved; then the CLI rows when asked."""
    sizes = [float(s) for s in (args.sizes or "1,4,12").split(",")]
    macs = macs_per_megapixel(load_model(SHIPPED_MODEL))
    limit = flop_limit_s_per_mp(macs, args.threads)
    runtimes = [r for r in args.runtimes.split(",") if r]
    spec = {"photo": True, "threads": args.threads}
    specs = {(r, mp): spec | {"runtime": r, "megapixels": mp} for mp in sizes for r in runtimes}
    runs = child_rounds("infer", specs, args.rounds or 1, args.timeout_s)
    with tempfile.TemporaryDirectory(prefix="bench-photo-") as work:
        for mp in sizes if args.cli else []:
            write_jpeg(Path(work) / f"photo-{mp:g}mp.jpg", mp)
        for _ in range(args.rounds or 1) if args.cli else []:
            for mp in sizes:
                found = run_cli(Path(work) / f"photo-{mp:g}mp.jpg", Path(work) / "out", args.threads)
                runs.setdefault(("cli", mp), []).append(found)
    rows = [merge_runs({"runtime": r, "megapixels": mp}, found, limit) for (r, mp), found in runs.items()]
    result = {"rows": rows, "clock_hz": clock_hz(), "macs_per_cycle": MACS_PER_CYCLE, "macs_per_mp": macs}
    plot(rows, limit, args.out.with_suffix(".png"))
    return result | {"flop_limit_s_per_mp": limit}, photo_markdown(rows, limit)


def forward(args: argparse.Namespace) -> tuple[dict, str]:
    """Rows per (size, backend); rounds interleave the backends, each call in a fresh child."""
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([256, 512] if args.quick else [1024, 2048])
    backends = available_backends(args.device, args.investigate)
    backends = [b for b in args.backends.split(",") if b in backends] if args.backends else backends
    backends = [b for b in backends if b != "compile"] if args.quick and not args.backends else backends
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as work:
        files = prepare_files(args.model, Path(work), backends, sizes)
        spec = {"threads": args.threads, "device": args.device, "model": str(args.model), "files": files}
        for size in sizes:
            specs = {backend: spec | {"backend": backend, "size": size} for backend in backends}
            runs = child_rounds("infer", specs, args.rounds or (2 if args.quick else 3), args.timeout_s)
            merged = [merge_runs({"backend": backend}, runs[backend]) for backend in backends]
            eager = next((r["ms_per_mpix"] for r in merged if r["backend"] == "eager" and "error" not in r), None)
            for row in merged:
                if eager and "error" not in row:
                    row["vs_eager"] = round(row["ms_per_mpix"] / eager, 2)
            rows += merged
    model = load_model(args.model)
    result = {"rows": rows, "model": str(args.model), "params": count_params(model)}
    return result | {"macs_per_mpix": macs_per_megapixel(model), "sizes": sizes}, forward_markdown(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="FILE.json; FILE.md (and FILE.png) beside it")
    parser.add_argument("--photo", action="store_true", help="whole photos through the `python -m infer` path")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="forward passes: the checkpoint")
    parser.add_argument("--quick", action="store_true", help="forward passes: 256 and 512 px, 2 rounds, no compile")
    parser.add_argument("--sizes", default=None, help="px (forward passes) or megapixels (--photo), comma-separated")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; --quick 2; --photo 1)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=None, help="forward passes: a subset of the available backends")
    parser.add_argument("--investigate", action="store_true", help="forward passes: add the ONNX Runtime variants")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="--photo: comma-separated runtimes")
    parser.add_argument("--cli", action="store_true", help="--photo: also time `python -m infer` with no options")
    parser.add_argument("--timeout-s", type=float, default=1800, help="per child measurement, warm-up included")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one measurement, JSON spec
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_child(json.loads(args.child))))
        return 0
    if args.out is None:
        parser.error("--out FILE.json is required")
    args.threads = args.threads or os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    result, markdown = photo(args) if args.photo else forward(args)
    result |= machine(args.device) | {"threads": args.threads, "load_avg_1min_start": round(load_before, 2)}
    save(result, args.out, markdown)
    return 0
