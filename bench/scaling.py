"""Scaling curves: images/s versus loader workers, batch size and patch size, and a PNG of them.

Each curve varies one setting around the device's default training config and measures, at every point, the parts
that must keep up with each other: the loader alone (torch, and DALI where it runs), the device degradation alone,
and one full training step of the default model (degradation + forward + backward + optimizer, `train.step`), all
in images (patches) per second. Where the loader's line sits far above the training step's, the trainer cannot
stall on data at that setting. A point that cannot run (more workers than shards, patches larger than the images)
is recorded as skipped with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.config import SuiteConfig
from bench.degradation import device_rate
from bench.stall import backend_ready, loader_ceiling
from bench.timing import measure
from pipeline.config import DegradeConfig, LoaderConfig
from train import amp_dtype, build_state, cpu_threads, load_config, train_step


def train_step_rate(
    batch: int, patch: int, device: torch.device, steps: int, repeats: int, extra: tuple[str, ...] = ()
) -> dict:
    """Images/s of `train.step.train_step` on the device's default model, random `clean` batches already on device."""

    sets = [f"run.device={device.type}", f"loader.batch_size={batch}", f"loader.patch_size={patch}", *extra]
    cfg = load_config(device.type, None, sets)
    state = build_state(cfg, device)
    dtype = amp_dtype(cfg.run.amp, device)
    clean = torch.rand(batch, 3, patch, patch, generator=torch.Generator().manual_seed(0)).to(device)

    def run() -> None:
        for _ in range(steps):
            train_step(state, clean, cfg, cfg.optim.lr, dtype)

    threads = torch.get_num_threads()
    if device.type == "cpu":  # the trainer's CPU thread rule (train.loop.fit), so the step runs as in training
        torch.set_num_threads(cpu_threads(cfg))
    try:
        return measure(run, steps * batch, repeats, device, patch * patch) | {"torch_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)


def _point(axis: str, x: int, series: str, fn) -> dict:
    try:
        return {"axis": axis, "x": x, "series": series} | fn()
    except (ValueError, RuntimeError) as err:  # a setting this data or device cannot run: say why, keep going
        return {"axis": axis, "x": x, "series": series, "skipped": f"{type(err).__name__}: {err}"}


def curves(shards: Path, images: list[np.ndarray], base: LoaderConfig, device: torch.device, cfg: SuiteConfig) -> dict:
    """All points of the three curves; `base` is the default training loader config that each curve varies."""
    ready = [b for b in cfg.backends if not backend_ready(b)]
    degrade_cfg = DegradeConfig(curriculum=False)

    def loader(loader_cfg: LoaderConfig) -> dict:
        return loader_ceiling(shards, loader_cfg, device, cfg.loader_steps, cfg.repeats)

    def degrade(batch: int, patch: int) -> dict:
        return device_rate(images, batch, patch, cfg.repeats, device, degrade_cfg, cfg.call_s)

    def step(batch: int, patch: int) -> dict:
        return train_step_rate(batch, patch, device, cfg.train_step_steps, cfg.repeats, cfg.train_sets)

    points: list[dict] = []
    seen: dict[tuple, dict] = {}  # the default (batch, patch) lies on both curves: measure it once

    def once(axis: str, x: int, series: str, batch_patch: tuple[int, int], fn) -> dict:
        key = (series, *batch_patch)
        if key not in seen:
            seen[key] = _point(axis, x, series, fn)
        return seen[key] | {"axis": axis, "x": x}

    for count in cfg.curve_workers:
        for backend in ready:
            varied = replace(base, backend=backend, workers=count)
            if backend == "torch" and count == base.workers:  # the same loader as the batch/patch curves' default
                key = (base.batch_size, base.patch_size)
                points.append(once("workers", count, "loader torch", key, lambda v=varied: loader(v)))
            else:
                points.append(_point("workers", count, f"loader {backend}", lambda v=varied: loader(v)))
    for axis, values in (("batch", cfg.curve_batches), ("patch", cfg.curve_patches)):
        for value in values:
            batch, patch = (value, base.patch_size) if axis == "batch" else (base.batch_size, value)
            varied = replace(base, backend="torch", batch_size=batch, patch_size=patch)
            points += [
                once(axis, value, "loader torch", (batch, patch), lambda v=varied: loader(v)),
                once(axis, value, "device degradation", (batch, patch), lambda b=batch, p=patch: degrade(b, p)),
                once(axis, value, "train step (default model)", (batch, patch), lambda b=batch, p=patch: step(b, p)),
            ]
    base_note = {"batch_size": base.batch_size, "patch_size": base.patch_size, "workers": base.workers}
    return {
        "base": base_note,
        "unavailable_backends": {b: backend_ready(b) for b in cfg.backends if b not in ready},
        "points": points,
    }


def markdown(section: dict) -> str:
    """One table per axis: rows are x values, columns the measured series (img/s)."""
    out = []
    for axis in ("workers", "batch", "patch"):
        points = [p for p in section["points"] if p["axis"] == axis]
        series = list(dict.fromkeys(p["series"] for p in points))
        if not points:
            continue
        out += [
            f"img/s versus {axis} (others at the default: {section['base']})",
            "",
            f"| {axis} | " + " | ".join(series) + " |",
            "|---:" * (len(series) + 1) + "|",
        ]
        for x in dict.fromkeys(p["x"] for p in points):
            cells = []
            for name in series:
                hit = next((p for p in points if p["x"] == x and p["series"] == name), None)
                cells.append("" if hit is None else "skipped" if "skipped" in hit else f"{hit['img_per_s']:.1f}")
            out.append(f"| {x} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(scaling: dict | None, degradation: dict | None, path: Path, title: str) -> Path:
    """2x2 PNG: img/s vs workers, batch, patch (log y), and degradation MPix/s vs batch against the CPU pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, axis in zip(axes.flat[:3], ("workers", "batch", "patch"), strict=True):
        points = [p for p in (scaling or {}).get("points", []) if p["axis"] == axis and "skipped" not in p]
        for name in dict.fromkeys(p["series"] for p in points):
            line = [(p["x"], p["img_per_s"]) for p in points if p["series"] == name]
            ax.plot(*zip(*line, strict=True), marker="o", label=name)
        ax.set(
            xlabel="loader workers" if axis == "workers" else f"{axis} size",
            ylabel="images / s",
            title=f"images/s vs {axis}",
        )
        _finish(ax, bool(points), [p["x"] for p in points])
    ax = axes.flat[3]
    rows = (degradation or {}).get("rows", [])
    for index, patch in enumerate(dict.fromkeys(r["patch"] for r in rows)):
        mine = [r for r in rows if r["patch"] == patch]
        colour = f"C{index}"
        ax.plot(
            [r["batch"] for r in mine],
            [r["device_mpix_per_s"] for r in mine],
            marker="o",
            color=colour,
            label=f"device, {patch} px",
        )
        ax.axhline(
            mine[0]["cpu_pool_mpix_per_s"],
            color=colour,
            linestyle="--",
            label=f"Pillow/libjpeg, {degradation['cpu_workers']} cores, {patch} px",
        )
    ax.set(xlabel="batch size", ylabel="MPix / s", title="degradation (noise + JPEG)")
    _finish(ax, bool(rows), [r["batch"] for r in rows])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finish(ax, has_data: bool, xs: list[int] | None = None) -> None:
    if not has_data:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    if xs and min(xs) > 0:
        ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(sorted(set(xs)), [str(x) for x in sorted(set(xs))])
        ax.minorticks_off()
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
