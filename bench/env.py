"""What this machine offers the project and what each part will use: `python -m bench env [--json] [--out FILE]`.

One short report for users and bug reports: CPU cores and free RAM; torch, CUDA and its GPUs (free VRAM), MPS;
NVIDIA DALI and which of its backends can run (CPU-only always when it imports, the GPU `mixed` decoder with CUDA);
TensorRT; onnxruntime and its execution providers; pillow-simd or stock Pillow and its JPEG library. Then the
choices that follow: the loader `auto` backend (`pipeline.loader.resolve_backend`), the training device and default
training config (`train.config.default_config`), ONNX / TensorRT export, the inference device. Every value is read
from this machine at run time; nothing is assumed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

import torch

PACKAGES = (
    "torch",
    "numpy",
    "webdataset",
    "kornia",
    "matplotlib",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "wandb",
    "gradio",
    "pyyaml",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _try_import(module: str) -> tuple[object | None, str]:
    """(module, "") when it imports, else (None, the reason in one line)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None, "not installed"
    try:
        return importlib.import_module(module), ""
    except Exception as err:  # a broken install (missing CUDA library, ABI mismatch) is exactly what to report
        return None, f"installed but does not import: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def memory_gib() -> dict[str, float | None]:
    """Total and available RAM from /proc/meminfo (Linux), else total from sysconf."""
    values: dict[str, float | None] = {"total_gib": None, "available_gib": None}
    try:
        with open("/proc/meminfo") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in handle if ":" in line}
        values = {"total_gib": fields["MemTotal"] / 2**20, "available_gib": fields["MemAvailable"] / 2**20}
    except (OSError, KeyError, ValueError):
        if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
            values["total_gib"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return {k: None if v is None else round(v, 2) for k, v in values.items()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def clock_hz() -> float:
    """The CPU clock /proc/cpuinfo reports (its first 'cpu MHz'); 3 GHz where it says nothing."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((float(line.split(":")[1]) * 1e6 for line in lines if line.startswith("cpu MHz")), 3e9)


def cuda_report() -> dict:
    """CUDA as torch sees it: build version, and per GPU name, capability, total/free memory, bf16."""
    report: dict = {"available": torch.cuda.is_available(), "torch_cuda_build": torch.version.cuda, "gpus": []}
    if not report["available"]:
        return report
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        report["gpus"].append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "total_gib": round(total / 2**30, 2),
                "free_gib": round(free / 2**30, 2),
            }
        )
    report["bf16"] = torch.cuda.is_bf16_supported()
    return report


def dali_report(cuda: bool) -> dict:
    """Whether DALI imports, its distribution, and which backends this machine can run."""
    dists = [d for d in importlib.metadata.packages_distributions().get("nvidia", []) if d.startswith("nvidia-dali")]
    dali, why = _try_import("nvidia.dali.plugin.pytorch")
    version = importlib.import_module("nvidia.dali").__version__ if dali is not None else None
    gpu_build = bool(dists) and not any("cpu" in d for d in dists)
    return {
        "installed": bool(dists) or why != "not installed",
        "imports": dali is not None,
        "why_not": why,
        "version": version,
        "distribution": dists[0] if dists else None,
        "cpu_only": dali is not None,
        "gpu_mixed": dali is not None and cuda and gpu_build,
    }


def onnx_report(cuda: bool) -> dict:
    ort, ort_why = _try_import("onnxruntime")
    providers = list(ort.get_available_providers()) if ort is not None else []
    exporter_missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    trt, trt_why = _try_import("tensorrt")
    return {
        "onnxruntime": getattr(ort, "__version__", None),
        "onnxruntime_why_not": ort_why,
        "providers": providers,
        "onnx_export": not exporter_missing,
        "onnx_export_missing": exporter_missing,
        "tensorrt": getattr(trt, "__version__", None),
        "tensorrt_why_not": trt_why,
        "tensorrt_export": trt is not None and cuda,
    }


def pillow_report() -> dict:
    import PIL
    from PIL import features

    simd = _version("pillow-simd")
    return {
        "version": PIL.__version__,
        "flavour": "pillow-simd" if simd == PIL.__version__ else "pillow",
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "jpeg_lib": features.version("jpg"),
    }


def choices(cuda: bool, dali: dict, onnx: dict) -> dict:
    """What each part of the project will use on this machine, from the project's own selection functions."""
    try:
        from pipeline.device import resolve_device
        from pipeline.loader import resolve_backend
        from train import amp_dtype, default_config
    except Exception as err:  # the report must still come out when the project itself does not import
        return {"error": f"the project does not import: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}

    device = resolve_device("auto")
    cfg = default_config(device.type)
    loader = resolve_backend("auto")
    loader_note = "DALI mixed (GPU) decode" if loader == "dali" else "webdataset + PIL workers"
    if loader == "dali" and not dali["imports"]:
        loader_note = f"DALI is picked but will fail: {dali['why_not']}"
    ort_gpu = [p for p in onnx["providers"] if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    infer_device = str(device)  # the one resolver (pipeline.device) serves every command
    return {
        "train_device": str(device),
        "loader_auto": loader,
        "loader_note": loader_note,
        "train_default": {
            "model_kwargs": cfg.model.kwargs,
            "batch_size": cfg.loader.batch_size,
            "patch_size": cfg.loader.patch_size,
            "workers": cfg.loader.workers,
            "amp": str(amp_dtype(cfg.run.amp, device)),
            "channels_last": cfg.run.channels_last,
        },
        "export_onnx": onnx["onnx_export"],
        "export_tensorrt": onnx["tensorrt_export"],
        "infer_device_auto": infer_device,
        "onnxruntime_gpu_providers": ort_gpu,
    }


def collect() -> dict:
    """The whole report as one JSON-ready dict."""
    cuda = cuda_report()
    dali = dali_report(cuda["available"])
    onnx = onnx_report(cuda["available"])
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": {"name": _cpu_name(), "cores": cores, "usable_cores": usable, "torch_threads": torch.get_num_threads()},
        "memory": memory_gib(),
        "torch": torch.__version__,
        "cuda": cuda,
        "mps": bool(torch.backends.mps.is_available()),
        "dali": dali,
        "onnx": onnx,
        "pillow": pillow_report(),
        "packages": {name: _version(name) for name in PACKAGES},
        "choices": choices(cuda["available"], dali, onnx),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render(report: dict) -> str:
    """The report as short human-readable text."""
    cpu, mem, cuda, dali, onnx, pil, pick = (
        report[k] for k in ("cpu", "memory", "cuda", "dali", "onnx", "pillow", "choices")
    )
    gpus = (
        "; ".join(
            f"{g['index']}: {g['name']} (sm {g['capability']}, {g['free_gib']:.1f}/{g['total_gib']:.1f} GiB free)"
            for g in cuda["gpus"]
        )
        or "none"
    )
    dali_line = (
        f"{dali['version']} ({dali['distribution']}): CPU-only yes, GPU mixed decode {_yes(dali['gpu_mixed'])}"
        if dali["imports"]
        else dali["why_not"]
    )
    lines = [
        f"python      {report['python']} ({report['executable']}), {report['platform']}",
        f"cpu         {cpu['name']}: {cpu['cores']} cores ({cpu['usable_cores']} usable), "
        f"torch threads {cpu['torch_threads']}",
        f"memory      {mem['available_gib']} GiB available of {mem['total_gib']} GiB",
        f"torch       {report['torch']}, CUDA build {cuda['torch_cuda_build']}",
        f"cuda        {_yes(cuda['available'])}; GPUs: {gpus}",
        f"mps         {_yes(report['mps'])}",
        f"dali        {dali_line}",
        f"tensorrt    {onnx['tensorrt'] or onnx['tensorrt_why_not']}",
        f"onnxruntime {onnx['onnxruntime'] or onnx['onnxruntime_why_not']}; providers: "
        f"{', '.join(onnx['providers']) or 'none'}",
        f"pillow      {pil['flavour']} {pil['version']}, JPEG: {'libjpeg-turbo' if pil['libjpeg_turbo'] else 'libjpeg'}"
        f" {pil['jpeg_lib']}",
        "",
    ]
    if "error" in pick:
        return "\n".join([*lines, f"choices     unknown: {pick['error']}"])
    train = pick["train_default"]
    lines += [
        f"train       device {pick['train_device']}; default model {train['model_kwargs']}, batch "
        f"{train['batch_size']} x {train['patch_size']} px, {train['workers']} loader workers, amp {train['amp']}, "
        f"channels_last {train['channels_last']}",
        f"loader      auto -> {pick['loader_auto']} ({pick['loader_note']})",
        f"export      ONNX {_yes(pick['export_onnx'])}"
        + (f" (missing {', '.join(onnx['onnx_export_missing'])})" if onnx["onnx_export_missing"] else "")
        + f", TensorRT {_yes(pick['export_tensorrt'])}",
        f"infer       device auto -> {pick['infer_device_auto']}; onnxruntime GPU providers: "
        f"{', '.join(pick['onnxruntime_gpu_providers']) or 'none'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
