"""Inference speed and memory per backend: `python -m bench.infer [--quick] [--model PATH] --out FILE.json`.

Backends: PyTorch eager, eager channels_last, torch.compile, ONNX Runtime (CPU EP; CUDA and TensorRT EPs where
installed), OpenVINO (where installed) and TensorRT engines (where `tensorrt` and CUDA are present); `--investigate`
adds ONNX Runtime variants
(graph optimisation levels, a fixed-shape export, the opset-18 dynamo export, one thread). Each (backend, size) runs
in a fresh child process: one warm-up call (it includes torch.compile's compilation, reported as first_call_s), then
one timed call, the device synchronised before each clock read. `--rounds` passes over all backends interleave
them (a change of the machine's load affects all alike); rows give the median over rounds in ms per megapixel.
Memory: CPU peak RSS during the timed call (high-water mark reset after the warm-up via /proc/self/clear_refs)
minus the RSS before the first call; CUDA: torch.cuda.max_memory_allocated over the same call minus what was
allocated before. Writes FILE.json (device, versions, threads, config, rows) and the table FILE.md.
Photo sizes through the whole `python -m infer` path (tiling, statistics, 1/4/12 MP, FLOP limit, plot):
`python -m bench.photo`, or `--photo` here (the other options are then bench.photo's).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.photo import reset_peak_rss, status_kib
from bench.timing import sync
from model import SHIPPED_MODEL, count_params, load_model, macs_per_megapixel

BACKENDS = {
    "eager": "PyTorch eager, NCHW",
    "channels_last": "PyTorch eager, channels_last model and input",
    "compile": "torch.compile (default mode), compiled for this size",
    "ort": "ONNX Runtime, CPU EP, opset 17, dynamic shapes, all graph optimisations",
    "ort-opt-disable": "as ort, graph optimisations off",
    "ort-opt-basic": "as ort, basic graph optimisations",
    "ort-opt-extended": "as ort, extended graph optimisations",
    "ort-static": "as ort, graph exported with this fixed input shape",
    "ort-opset18": "as ort, opset 18 graph from the dynamo exporter",
    "openvino": "OpenVINO CPU plugin, f32 inference precision, reading the same ONNX file",
    "ort-cuda": "ONNX Runtime, CUDA EP (host input copied each call)",
    "ort-trt": "ONNX Runtime, TensorRT EP (host input copied each call)",
    "tensorrt-fp32": "TensorRT engine, fp32 (TF32 off), EngineRunner",
    "tensorrt-fp16": "TensorRT engine, fp16 with LayerNorm pinned to fp32, EngineRunner",
}


def available_backends(device: str, investigate: bool) -> list[str]:
    """The backends this machine can run, in table order."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    names = ["eager", "channels_last", "compile", "ort"] + ["openvino"] * bool(importlib.util.find_spec("openvino"))
    if investigate:
        names += ["ort-opt-disable", "ort-opt-basic", "ort-opt-extended", "ort-static", "ort-opset18"]
    if device == "cuda":
        names += [
            n
            for n, p in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider"))
            if p in providers
        ]
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
    if "ort-static" in backends:
        for size in sizes:
            files[f"onnx-static-{size}"] = str(work / f"model-{size}.onnx")
            export_onnx(source, files[f"onnx-static-{size}"], static_shape=(1, 3, size, size))
    for precision in ("fp32", "fp16"):
        if f"tensorrt-{precision}" in backends:
            from export.tensorrt import export_tensorrt
            from export.trt_plan import make_profile

            profile = make_profile((1, 3, 64, 64), (1, 3, min(sizes), min(sizes)), (1, 3, max(sizes), max(sizes)))
            files[f"engine-{precision}"] = str(work / f"model-{precision}.engine")
            export_tensorrt(files[f"engine-{precision}"], profile=profile, source=source, precision=precision)
    return files


def run_child(spec: dict, timeout_s: float) -> dict:
    """One (backend, size) measurement in a fresh interpreter; errors and timeouts become a row with `error`."""
    command = [sys.executable, "-m", "bench.infer", "--child", json.dumps(spec), "--out", "-"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout_s:.0f} s (warm-up included)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def make_runner(spec: dict):
    """A no-argument callable running one restoration of a (1, 3, size, size) input with the spec's backend."""
    backend, size, device = spec["backend"], spec["size"], torch.device(spec["device"])
    degraded = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))  # (1, 3, H, W)
    if backend.startswith("ort"):
        from export.onnx import ort_session

        name = {"ort-static": f"onnx-static-{size}", "ort-opset18": "onnx18"}.get(backend, "onnx")
        level = backend.removeprefix("ort-opt-") if backend.startswith("ort-opt-") else "all"
        provider = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(backend)
        providers = [provider, "CPUExecutionProvider"] if provider else None
        session = ort_session(spec["files"][name], threads=spec["threads"], level=level, providers=providers)
        feeds = {"degraded": degraded.numpy()}
        return lambda: session.run(["restored"], feeds)
    if backend == "openvino":
        from infer.backend_openvino import OpenVinoBackend
        from infer.backends import set_cpu_threads

        set_cpu_threads(spec["threads"])
        runner = OpenVinoBackend(Path(spec["files"]["onnx"]))
        return lambda: runner(degraded)
    if backend.startswith("tensorrt"):
        from export.tensorrt import EngineRunner

        runner = EngineRunner(spec["files"]["engine-" + backend.split("-")[1]])
        degraded = degraded.to(device)
        return lambda: runner(degraded)
    model = load_model(spec["model"]).to(device)
    degraded = degraded.to(device)
    if backend == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        degraded = degraded.contiguous(memory_format=torch.channels_last)
    if backend == "compile":
        model = torch.compile(model)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(degraded)

    return run


def child(spec: dict) -> dict:
    """One fresh-process measurement: warm up once, time one call, measure memory (see the module docstring)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    run = make_runner(spec)
    rss_before = status_kib("VmRSS")
    cuda_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    run()
    sync(device)
    first_call_s = time.perf_counter() - start
    reset_ok = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    row = {
        "mpix": spec["size"] ** 2 / 1e6,
        "times_ms": [round((time.perf_counter() - start) * 1000, 1)],
        "first_call_s": round(first_call_s, 2),
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "peak_rss_delta_mib": round((status_kib("VmHWM") - rss_before) / 1024, 1),
        "note": BACKENDS[spec["backend"]] + ("" if reset_ok else "; peak RSS includes loading (no clear_refs)"),
    }
    if device.type == "cuda" and not spec["backend"].startswith(("ort", "tensorrt")):
        row["cuda_peak_delta_mib"] = round((torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20, 1)
    return row


def measure(backends: list[str], sizes: list[int], spec: dict, rounds: int, timeout_s: float) -> list[dict]:
    """Rows per (size, backend). Rounds interleave the backends (every round runs each backend once, in a fresh
    child), so a change of the machine's load during the run affects all backends alike."""
    rows = []
    for size in sizes:
        runs: dict[str, list[dict]] = {backend: [] for backend in backends}
        for _ in range(rounds):
            for backend in backends:
                runs[backend].append(run_child({**spec, "backend": backend, "size": size}, timeout_s))
        merged = [{"backend": backend, "size": f"{size}x{size}", **merge(runs[backend])} for backend in backends]
        eager = next((r["ms_per_mpix"] for r in merged if r["backend"] == "eager" and "error" not in r), None)
        for row in merged:
            if eager and "error" not in row:
                row["vs_eager"] = round(row["ms_per_mpix"] / eager, 2)
            print(json.dumps(row), flush=True)
        rows += merged
    return rows


def merge(runs: list[dict]) -> dict:
    """One row from several child measurements: median time over all timed calls, largest memory figures."""
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return {"error": errors[0]}
    times_ms = [t for run in runs for t in run["times_ms"]]
    median_ms = statistics.median(times_ms)
    row = {
        "median_ms": round(median_ms, 1),
        "ms_per_mpix": round(median_ms / runs[0]["mpix"], 1),
        "times_ms": times_ms,
        "first_call_s": statistics.median(run["first_call_s"] for run in runs),
        **{key: max(run[key] for run in runs) for key in ("peak_rss_mib", "peak_rss_delta_mib")},
        "note": runs[0]["note"],
    }
    if "cuda_peak_delta_mib" in runs[0]:
        row["cuda_peak_delta_mib"] = max(run["cuda_peak_delta_mib"] for run in runs)
    return row


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (memory: the CUDA delta where measured, else the CPU peak RSS delta)."""
    lines = [
        "| backend | size | median ms | ms / MPix | vs eager | first call s | peak mem delta MiB | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    keys = ("backend", "size", "median_ms", "ms_per_mpix", "vs_eager", "first_call_s")
    for r in rows:
        memory = r.get("cuda_peak_delta_mib", r.get("peak_rss_delta_mib", "-"))
        cells = [r.get(key, "-") for key in keys] + [memory, r.get("error", r.get("note", ""))]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def versions() -> dict:
    names = ["onnx", "onnxruntime"] + (["tensorrt"] if importlib.util.find_spec("tensorrt") else [])
    found = {name: importlib.import_module(name).__version__ for name in names}
    return {"python": platform.python_version(), "torch": torch.__version__, **found}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file; the markdown table goes next to it")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--quick", action="store_true", help="256 and 512 px, 2 rounds, no torch.compile")
    parser.add_argument("--sizes", default=None, help="comma-separated square sizes (default 1024,2048)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds, one timed call each (3)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for torch and ORT (0: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=None, help="comma-separated subset of the available backends")
    parser.add_argument("--investigate", action="store_true", help="add the ONNX Runtime variants")
    parser.add_argument("--timeout-s", type=float, default=900, help="per backend and size, compilation included")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    if argv is None and "--photo" in sys.argv:  # the photo-scale benchmark: bench/photo.py
        from bench.photo import main as photo_main

        return photo_main([a for a in sys.argv[1:] if a != "--photo"])
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([256, 512] if args.quick else [1024, 2048])
    rounds = args.rounds or (2 if args.quick else 3)
    threads = args.threads or os.cpu_count() or 1
    backends = available_backends(args.device, args.investigate)
    if args.backends:
        backends = [b for b in args.backends.split(",") if b in backends]
    elif args.quick:
        backends = [b for b in backends if b != "compile"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as work:
        files = prepare_files(args.model, Path(work), backends, sizes)
        spec = {"threads": threads, "device": args.device, "model": str(args.model), "files": files}
        rows = measure(backends, sizes, spec, rounds, args.timeout_s)
    model = load_model(args.model)
    result = {
        "rows": rows,
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "versions": versions(),
        "config": {"sizes": sizes, "rounds": rounds, "quick": args.quick, "investigate": args.investigate},
        "model": str(args.model),
        "params": count_params(model),
        "macs_per_mpix": macs_per_megapixel(model),
        "load_avg_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
    }
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = markdown(rows)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
