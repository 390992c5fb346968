"""The benchmark harness: `python -m bench SUBJECT [options]`, one module per subject.

Subjects: `data` (shard reading, decoding, crops, the loaders, stored formats), `degradation` (the trainer's
degradation call against Pillow/libjpeg, its ops, the JPEG's fidelity), `step` (the training step per batch size
and precision mode; a real short training's data-wait share), `infer` (raw forward passes per backend, and whole
photos through `python -m infer`), `env` (what this machine offers), `suite` (all throughput figures in one run).

Every timed figure comes from this runner: `measure` (one untimed warm-up call, then `repeats` timed calls) or
`interleave` (a warm-up of each contender, then rounds in which each runs once in turn, so a change of the
machine's load slows them alike). The device is synchronised before each clock read, so queued CUDA/MPS work counts
in the call that queued it; medians are reported with the raw times. `save` writes FILE.json (with the machine and
versions) and the markdown tables beside it as FILE.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

SUBJECTS = ("data", "degradation", "step", "infer", "env", "suite")


def sync(device: torch.device) -> None:
    """Wait for queued work on `device` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def significant(value: float, digits: int = 5) -> float:
    """`value` rounded to `digits` significant digits (rates span 0.01 to 1e6: fixed decimals would lose them)."""
    return float(f"{value:.{digits}g}")


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `fn`, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def repeat_times(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` timed calls of `fn`, after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return [timed(fn, device) for _ in range(repeats)]


def rates(times: list[float], items: int, pixels_per_item: float) -> dict:
    """Rates of the median call of `times` (each processing `items` images of `pixels_per_item` pixels)."""
    median_s = statistics.median(times)
    return {
        "img_per_s": significant(items / median_s),
        "mpix_per_s": significant(items * pixels_per_item / median_s / 1e6),
        "median_s": significant(median_s, 7),
        "times_s": [significant(t, 7) for t in times],
        "items": items,
    }


def measure(
    fn: Callable[[], object], items: int, repeats: int, device: torch.device, pixels_per_item: float, warmup: int = 1
) -> dict:
    """Time `fn`, which processes `items` images of `pixels_per_item` pixels each -> rates from the median call."""
    return rates(repeat_times(fn, repeats, device, warmup), items, pixels_per_item)


def interleave(
    calls: dict[str, Callable[[], object]], rounds: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each contender's call in each of `rounds` rounds, after `warmup` untimed calls of each."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(timed(fn, device))
    return times


def calls_for(fn: Callable[[], object], device: torch.device, call_s: float, most: int = 10_000) -> int:
    """How many calls of `fn` fill about `call_s` seconds, from one timed trial call (which also warms up)."""
    return max(1, min(most, math.ceil(call_s / max(timed(fn, device), 1e-9))))


def table(rows: list[dict], columns: dict[str, str | Callable[[dict], object]]) -> str:
    """Rows as a markdown table: header -> row key, or a function of the row (missing keys show as blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [col(row) if callable(col) else row.get(col, "") for col in columns.values()]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def machine(device: torch.device | str = "cpu") -> dict:
    """Device, cores, threads, load and versions: what a reader needs to weigh a figure."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "name": name,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def save(result: dict, out: Path | None, markdown: str) -> None:
    """Print `markdown`; with `out`, write FILE.json (atomically) and FILE.md beside it."""
    print(markdown)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(out)
    out.with_suffix(".md").write_text(markdown + "\n")


def child(subject: str, spec: dict, timeout_s: float) -> dict:
    """`python -m bench SUBJECT --child SPEC` in a fresh interpreter (its own threads and memory) -> its JSON line;
    a failure or timeout becomes `{"error": why}`."""
    command = [sys.executable, "-m", "bench", subject, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout_s:.0f} s (warm-up included)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def child_rounds(subject: str, specs: dict, rounds: int, timeout_s: float) -> dict[object, list[dict]]:
    """`child` measurements of each spec (key -> spec) in `rounds` interleaved rounds -> key -> results."""
    found: dict[object, list[dict]] = {key: [] for key in specs}
    for _ in range(rounds):
        for key, spec in specs.items():
            found[key].append(child(subject, spec, timeout_s))
    return found


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


def measured_call(warmup: Callable[[], object], run: Callable[[], object], device: torch.device) -> dict:
    """Seconds of `warmup` (first_call_s) and of `run` (seconds), and the memory `run` took: the peak RSS over it
    (high-water mark reset after the warm-up where Linux allows: `peak_reset`) and its rise over the RSS before the
    warm-up; on CUDA, torch's peak allocation over `run` less what was allocated before."""
    rss_before = status_kib("VmRSS")
    cuda_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    first_call_s = timed(warmup, device)
    peak_reset = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"first_call_s": round(first_call_s, 2), "seconds": timed(run, device), "peak_reset": peak_reset}
    row |= {"peak_rss_mib": status_kib("VmHWM") / 1024, "peak_rss_delta_mib": (status_kib("VmHWM") - rss_before) / 1024}
    if device.type == "cuda":
        row["cuda_peak_delta_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    return row


def merge_runs(name: dict, runs: list[dict], limit: float | None = None) -> dict:
    """One row from several `measured_call` results of a child (`s_per_mp` each): the median and fastest s/MP, all
    times, the largest memory figures, the first run's notes; `limit` (s/MP) adds the ratio to it."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return name | {"error": runs[0]["error"]}
    s_per_mp = statistics.median(run["s_per_mp"] for run in good)
    row = name | {"size": good[0].get("size", ""), "ms_per_mpix": round(s_per_mp * 1000, 1)}
    row |= {"s_per_mp": round(s_per_mp, 3), "min_s_per_mp": round(min(r["s_per_mp"] for r in good), 3)}
    row |= {"times_ms": [round(r["seconds"] * 1000, 1) for r in good if "seconds" in r]}
    row["median_ms"] = round(statistics.median(row["times_ms"]), 1) if row["times_ms"] else None
    memory = [k for k in ("peak_rss_mib", "peak_rss_delta_mib", "cuda_peak_delta_mib") if k in good[0]]
    row |= {key: round(max(run[key] for run in good), 1) for key in memory}
    row |= {k: good[0][k] for k in ("note", "backend", "passes") if k in good[0]}
    row["first_call_s"] = statistics.median(r.get("first_call_s", 0.0) for r in good)
    return row | ({"vs_flop_limit": round(s_per_mp / limit, 1)} if limit else {})


def figure_axes(rows: int, cols: int, size: tuple[float, float]):
    """A matplotlib figure (headless backend) and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size)


def draw(axis, lines: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> bool:
    """One marked line per non-empty series; "not measured" on an empty plot. Returns whether anything was drawn."""
    lines = {name: points for name, points in lines.items() if points}
    for name, points in lines.items():
        axis.plot(*zip(*points, strict=True), marker="o", label=name)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if not lines:
        axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes)
    return bool(lines)
