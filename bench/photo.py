"""Photo-scale inference: `python -m bench.photo --out FILE.json [--sizes 1,4,12] [--runtimes ...] [--cli]`.

For each runtime of the shipped model (`infer.runtime`: torch eager, onnxruntime, OpenVINO) and each photo size in
megapixels (4:3, e.g. 12 MP = 4000 x 3000), one fresh child process opens the model, restores a 256 x 256 image
(warm-up), then times `infer.tiling.restore` on the photo with the defaults `python -m infer` uses (whole or tiled
as the memory limit decides, pooling statistics `infer.tiling.DEFAULT_STATS`). `--cli` also times the command
itself, `python -m infer photo.jpg --out DIR` with no options, on JPEGs of each size (decode, model load, PNG write
included). Each row: seconds per megapixel, the model pixels run per image pixel (tiles' overlap and statistics
passes; 1.0 = one whole pass), (median over `--rounds`, interleaved), the process's peak resident memory
(VmHWM; for `--cli`, the child's ru_maxrss), and the ratio to the FLOP-limited time of this machine:

    FLOP-limited s/MP = model MACs per MP / (threads x clock x MACS_PER_CYCLE)

with the clock from /proc/cpuinfo and `MACS_PER_CYCLE` = 16 fp32 multiply-adds per core and cycle (two 256-bit FMA
pipes: AVX2 on any recent x86, and Zen 4's AVX-512, which it executes as two 256-bit halves). Writes FILE.json,
the table FILE.md and the plot FILE.png (s/MP against megapixels per runtime, with the FLOP limit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MACS_PER_CYCLE = 16
RUNTIMES = ("torch", "onnxruntime", "openvino")


def photo_hw(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 photo of about `megapixels`, multiples of 8 (12 -> 3000 x 4000)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8
    return width * 3 // 4 // 8 * 8, width


def clock_hz() -> float:
    """The CPU clock /proc/cpuinfo reports (its first 'cpu MHz'); 3 GHz where it says nothing."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    return 3e9


def flop_limit_s_per_mp(macs_per_mp: float, threads: int) -> float:
    return macs_per_mp / (threads * clock_hz() * MACS_PER_CYCLE)


def child(spec: dict) -> dict:
    """One measurement in this fresh process: open, warm up, time `restore` once, read the peak RSS."""
    from infer.backends import open_backend, set_cpu_threads
    from infer.measure_tiling import CountingBackend
    from infer.tiling import restore

    set_cpu_threads(spec["threads"])
    backend = CountingBackend(open_backend(None, device="cpu", runtime=spec["runtime"]))
    height, width = photo_hw(spec["megapixels"])
    generator = torch.Generator().manual_seed(0)
    restore(backend, torch.rand(1, 3, 256, 256, generator=generator))
    degraded = torch.rand(1, 3, height, width, generator=generator)  # (1, 3, H, W)
    backend.pixels = 0
    start = time.perf_counter()
    restore(backend, degraded)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "s_per_mp": seconds / (height * width / 1e6),
        "backend": backend.name,
        "peak_rss_mib": status_kib("VmHWM") / 1024,
        "passes": backend.pixels / (height * width),
        "size": f"{width}x{height}",
    }


def run_cli(jpeg: Path, out: Path, threads: int) -> dict:
    """`python -m infer JPEG --out OUT` in a child: wall seconds and the child's peak RSS (ru_maxrss)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "infer", str(jpeg), "--out", str(out), "--threads", str(threads)]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    first_lines = process.stdout.read().decode().splitlines()[:2] if process.stdout else []
    if process.returncode != 0:
        return {"error": f"exit {process.returncode}"}
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "said": " | ".join(first_lines)}


def status_kib(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in KiB (ru_maxrss where there is no /proc)."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith(field + ":"))


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def write_jpeg(path: Path, megapixels: float) -> None:
    """A noisy JPEG photo-sized test image (smooth colour fields plus noise: speed does not depend on content)."""
    from PIL import Image

    height, width = photo_hw(megapixels)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fields = [128 + 100 * np.sin(x / (97 + 31 * c) + y / (131 + 17 * c)) for c in range(3)]
    rgb = np.stack(fields, axis=-1) + rng.normal(0, 20, (height, width, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=60)


def measure(args: argparse.Namespace, macs_per_mp: float) -> list[dict]:
    """Rows per (runtime, size), rounds interleaved; then the CLI rows when asked."""
    limit = flop_limit_s_per_mp(macs_per_mp, args.threads)
    runs: dict[tuple[str, float], list[dict]] = {}
    for _ in range(args.rounds):
        for megapixels in args.sizes:
            for runtime in args.runtimes:
                spec = {"runtime": runtime, "megapixels": megapixels, "threads": args.threads}
                command = [sys.executable, "-m", "bench.photo", "--child", json.dumps(spec), "--out", "-"]
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
                lines = done.stdout.strip().splitlines()
                result = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-300:]}
                runs.setdefault((runtime, megapixels), []).append(result)
                print(runtime, megapixels, json.dumps(result), flush=True)
    if args.cli:
        with tempfile.TemporaryDirectory(prefix="bench-photo-") as work:
            for megapixels in args.sizes:
                write_jpeg(Path(work) / f"photo-{megapixels:g}mp.jpg", megapixels)
            for _ in range(args.rounds):
                for megapixels in args.sizes:
                    jpeg = Path(work) / f"photo-{megapixels:g}mp.jpg"
                    result = run_cli(jpeg, Path(work) / "out", args.threads)
                    height, width = photo_hw(megapixels)
                    result |= {
                        "s_per_mp": result.get("seconds", float("nan")) / (height * width / 1e6),
                        "size": f"{width}x{height}",
                    }
                    runs.setdefault(("cli", megapixels), []).append(result)
                    print("cli", megapixels, json.dumps(result), flush=True)
    return [_row(runtime, megapixels, results, limit) for (runtime, megapixels), results in runs.items()]


def _row(runtime: str, megapixels: float, results: list[dict], limit: float) -> dict:
    good = [r for r in results if "error" not in r]
    if not good:
        return {"runtime": runtime, "megapixels": megapixels, "error": results[0]["error"]}
    median = statistics.median(r["s_per_mp"] for r in good)
    return {
        "runtime": runtime,
        "megapixels": megapixels,
        "size": good[0]["size"],
        "s_per_mp": round(median, 3),
        "s_per_mp_all": [round(r["s_per_mp"], 3) for r in good],
        "min_s_per_mp": round(min(r["s_per_mp"] for r in good), 3),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in good)),
        "vs_flop_limit": round(median / limit, 1),
        "backend": good[0].get("backend", good[0].get("said", "")),
        "passes": round(good[0].get("passes", 0), 2),
    }


def markdown(rows: list[dict], limit: float) -> str:
    lines = [
        f"FLOP-limited time: {limit:.3f} s/MP (see bench/photo.py)",
        "",
        "| runtime | MP | size | s/MP (median) | s/MP (min) | x FLOP limit | peak RSS MiB | model passes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['runtime']} | {r['megapixels']:g} | error: {r['error'][:80]} | | | | | |")
            continue
        lines.append(
            f"| {r['runtime']} | {r['megapixels']:g} | {r['size']} | {r['s_per_mp']} | {r['min_s_per_mp']} | "
            f"{r['vs_flop_limit']} | {r['peak_rss_mib']} | {r['passes'] or '-'} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        points = sorted((r["megapixels"], r["s_per_mp"]) for r in rows if r["runtime"] == runtime and "error" not in r)
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=runtime)
    axis.axhline(limit, color="grey", linestyle="--", label=f"FLOP limit ({limit:.2f} s/MP)")
    axis.set(
        xlabel="photo size (MP)",
        ylabel="seconds per megapixel",
        ylim=(0, None),
        title="Shipped model, CPU: time per megapixel",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file; FILE.md and FILE.png go next to it")
    parser.add_argument("--sizes", default="1,4,12", help="photo sizes in megapixels")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, of " + ", ".join(RUNTIMES))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores this process may use)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (the median is reported)")
    parser.add_argument("--cli", action="store_true", help="also time `python -m infer` with no options")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from infer.backends import cpu_threads
    from model import SHIPPED_MODEL, load_model, macs_per_megapixel

    args.threads = args.threads or cpu_threads()
    args.sizes = [float(s) for s in args.sizes.split(",")]
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    macs = macs_per_megapixel(load_model(SHIPPED_MODEL))
    rows = measure(args, macs)
    limit = flop_limit_s_per_mp(macs, args.threads)
    result = {
        "rows": rows,
        "threads": args.threads,
        "clock_hz": clock_hz(),
        "macs_per_cycle": MACS_PER_CYCLE,
        "macs_per_mp": macs,
        "flop_limit_s_per_mp": limit,
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = markdown(rows, limit)
    args.out.with_suffix(".md").write_text(table + "\n")
    plot(rows, limit, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
