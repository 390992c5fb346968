"""Every throughput figure in one run: `python -m bench suite [--quick] --out FILE.json [--shards DIR]`.

Sections (`--sections`, all by default), each around the device's default training config:
- `stages`: `bench.data` (read, decode, crop, degrade, the loaders end to end);
- `degradation`: `bench.degradation.sweep`, device MPix/s per batch x patch against Pillow/libjpeg on all cores;
- `scaling`: images/s versus loader workers, batch and patch size; at each point the loader alone (torch, and DALI
  where it runs), the device degradation alone and the whole training step (`bench.step`); where the loader's line
  sits far above the step's, training cannot stall on data there; a point that cannot run says why;
- `training`: `bench.step.data_wait`, a short real training per loader backend and its data-wait share;
- `infer`: `python -m bench infer` in a subprocess.
Writes FILE.json (device, versions, the environment report, the sizes, medians and raw times), FILE.md and FILE.png
(the curves) after every section, so a run cut short keeps what it measured. Without `--shards` it generates a
dead-leaves set once beside FILE (`shards.synth`). `--quick` is sized for a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from bench import draw, figure_axes, machine, save
from bench.data import backend_ready, loader_ceiling, loaders, prepare_shards, stages, stages_markdown
from bench.degradation import compare, cut_patches, sweep, sweep_markdown
from bench.step import data_wait, data_wait_markdown, step_rates
from pipeline.device import resolve_device
from train import load_config, to_dict

SECTIONS = ("stages", "degradation", "scaling", "training", "infer")
SCHEMA = "ml-restoration/bench.suite/2"


@dataclass(frozen=True)
class SuiteConfig:
    quick: bool
    repeats: int  # timed calls (or rounds) per measurement, after a warm-up; the median is reported
    loader_steps: int  # batches per timed loader call
    stage_limit: int  # images decoded for the stages and as the degradation's patch source
    degrade_batches: tuple[int, ...]
    degrade_patches: tuple[int, ...]
    curve_workers: tuple[int, ...]  # candidates; those above the machine's cores are dropped
    curve_batches: tuple[int, ...]
    curve_patches: tuple[int, ...]
    train_step_steps: int  # training steps per timed call on the curves
    train_steps: int  # steps of each real training run (data wait)
    train_log_every: int  # metrics window; the first window (start-up) is reported apart
    backends: tuple[str, ...] = ("torch", "dali")
    train_sets: tuple[str, ...] = ()  # extra `--set` overrides for every training config (tests: a tiny model)
    synth_count: int = 240  # images generated when no --shards is given
    infer_args: tuple[str, ...] = ()  # arguments of `python -m bench infer` (its --device and --out are the suite's)
    infer_timeout_s: int = 600
    call_s: float = 0.25  # target seconds per timed degradation call


_CPU = {"repeats": 5, "loader_steps": 16, "stage_limit": 64, "train_step_steps": 2, "train_steps": 150}
_GPU = {"repeats": 5, "loader_steps": 32, "stage_limit": 64, "train_step_steps": 10, "train_steps": 500}
PRESETS: dict[tuple[str, bool], dict] = {  # (device kind, quick) -> sizes; the CPU's quick curves stop at the default
    ("cpu", True): _CPU | {"repeats": 3, "loader_steps": 8, "stage_limit": 16, "degrade_batches": (8, 32),
                           "degrade_patches": (64, 96, 128), "curve_workers": (1, 2), "curve_batches": (2, 4, 8),
                           "curve_patches": (32, 64, 96), "train_step_steps": 1, "train_steps": 8,
                           "train_log_every": 4, "synth_count": 32, "infer_args": ("--quick", "--sizes", "256"),
                           "infer_timeout_s": 150},
    ("cpu", False): _CPU | {"degrade_batches": (8, 32, 128), "degrade_patches": (64, 96, 128, 256),
                            "curve_workers": (1, 2, 4, 8), "curve_batches": (4, 8, 16, 32),
                            "curve_patches": (64, 96, 128, 192), "train_log_every": 25},
    ("gpu", True): _GPU | {"repeats": 3, "loader_steps": 16, "stage_limit": 32, "degrade_batches": (8, 32, 128),
                           "degrade_patches": (64, 128, 256), "curve_workers": (1, 2, 4, 8, 16),
                           "curve_batches": (8, 32, 128), "curve_patches": (64, 128, 256), "train_step_steps": 5,
                           "train_steps": 200, "train_log_every": 40, "infer_args": ("--quick",),
                           "infer_timeout_s": 300},
    ("gpu", False): _GPU | {"degrade_batches": (8, 32, 128, 512), "degrade_patches": (64, 128, 256),
                            "curve_workers": (1, 2, 4, 8, 16), "curve_batches": (8, 16, 32, 64, 128),
                            "curve_patches": (64, 96, 128, 192, 256), "train_log_every": 50},
}  # fmt: skip


def suite_config(device_type: str, quick: bool) -> SuiteConfig:
    """The suite's sizes for a device type ("cpu", "cuda", "mps")."""
    preset = dict(PRESETS[("cpu" if device_type == "cpu" else "gpu", quick)])
    cores = os.cpu_count() or 1
    preset["curve_workers"] = tuple(w for w in preset["curve_workers"] if w <= cores) or preset["curve_workers"][:1]
    return SuiteConfig(quick=quick, **preset)


def header(device: torch.device, settings: SuiteConfig, shards: Path, command: str) -> dict:
    """Everything a reader needs to trust or reproduce the figures: device, versions, config, the command."""
    from bench.env import collect
    from pipeline.shard_format import read_manifest

    env, train = collect(), to_dict(load_config(device.type, None, [f"run.device={device.type}", *settings.train_sets]))
    pillow = f"{env['pillow']['flavour']} {env['pillow']['version']}"
    versions = {"python": env["python"], "torch": env["torch"], "cuda_build": env["cuda"]["torch_cuda_build"]}
    versions |= {"pillow": pillow, "dali": env["dali"]["version"]}
    versions |= {k: v for k, v in env["packages"].items() if k in ("numpy", "webdataset", "onnxruntime")}
    samples = {k: v["samples"] for k, v in read_manifest(shards)["splits"].items()}
    default = {"model": train["model"], "loader": train["loader"]} | {
        k: train["run"][k] for k in ("amp", "channels_last")
    }
    config = {"suite": asdict(settings), "shards": str(shards), "shard_samples": samples, "train_default": default}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = {"schema": SCHEMA, "command": command, "started": started, "device": machine(device)}
    return result | {"versions": versions, "config": config, "environment": env, "sections": {}}


def curves(shards: Path, images, device: torch.device, settings: SuiteConfig) -> dict:
    """All points of the three curves around the default training loader config."""
    base = load_config(device.type, None, [f"run.device={device.type}", *settings.train_sets]).loader
    seen: dict[tuple, dict] = {}  # the default (batch, patch) lies on both curves: measure it once

    def point(axis: str, x: int, series: str, key: tuple, fn) -> dict:
        if key not in seen:
            try:
                seen[key] = fn()
            except (ValueError, RuntimeError) as err:  # a setting this data or device cannot run: say why, go on
                seen[key] = {"skipped": f"{type(err).__name__}: {err}"}
        return {"axis": axis, "x": x, "series": series} | seen[key]

    def loader(cfg) -> dict:
        return loader_ceiling(shards, cfg, device, settings.loader_steps, settings.repeats)

    def degrade(batch: int, patch: int) -> dict:
        patches = cut_patches(images, batch, patch)
        return compare(patches, ("auto",), settings.repeats, device, 0, settings.call_s, single=False)["auto"]

    def step(batch: int, patch: int) -> dict:
        sets = [*settings.train_sets, f"loader.patch_size={patch}"]
        return step_rates(None, sets, ["default"], [batch], settings.train_step_steps, settings.repeats, device)[0]

    ready = [b for b in settings.backends if not backend_ready(b)]
    points = []
    for count in settings.curve_workers:
        for backend in ready:
            varied = replace(base, backend=backend, workers=count)
            same = backend == "torch" and count == base.workers  # the batch/patch curves' default loader
            key = ("loader torch", base.batch_size, base.patch_size) if same else (backend, count)
            points.append(point("workers", count, f"loader {backend}", key, lambda v=varied: loader(v)))
    for axis, values in (("batch", settings.curve_batches), ("patch", settings.curve_patches)):
        for value in values:
            batch, patch = (value, base.patch_size) if axis == "batch" else (base.batch_size, value)
            varied = replace(base, backend="torch", batch_size=batch, patch_size=patch)
            series = {
                "loader torch": ("loader torch", lambda v=varied: loader(v)),
                "device degradation": ("degrade", lambda b=batch, p=patch: degrade(b, p)),
                "train step (default model)": ("step", lambda b=batch, p=patch: step(b, p)),
            }
            points += [point(axis, value, name, (kind, batch, patch), fn) for name, (kind, fn) in series.items()]
    unavailable = {b: backend_ready(b) for b in settings.backends if b not in ready}
    base_note = {"batch_size": base.batch_size, "patch_size": base.patch_size, "workers": base.workers}
    return {"base": base_note, "unavailable_backends": unavailable, "points": points}


def curves_markdown(section: dict) -> str:
    """One table per axis: rows are x values, columns the measured series (img/s)."""
    out = []
    for axis in ("workers", "batch", "patch"):
        points = [p for p in section["points"] if p["axis"] == axis]
        series = list(dict.fromkeys(p["series"] for p in points))
        if not points:
            continue
        out += [f"img/s versus {axis} (others at the default: {section['base']})", ""]
        out += [f"| {axis} | " + " | ".join(series) + " |", "|---:" * (len(series) + 1) + "|"]
        for x in dict.fromkeys(p["x"] for p in points):
            hits = [next((p for p in points if p["x"] == x and p["series"] == name), {}) for name in series]
            cells = ["skipped" if "skipped" in h else f"{h['img_per_s']:.1f}" if h else "" for h in hits]
            out.append(f"| {x} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    """2x2 PNG: img/s vs workers, batch, patch (log axes), and degradation MPix/s vs batch per patch size."""
    sections = {k: v for k, v in result["sections"].items() if v.get("status") == "ok"}
    figure, axes = figure_axes(2, 2, (12, 9))
    for ax, axis in zip(axes.flat[:3], ("workers", "batch", "patch"), strict=True):
        points = [p for p in sections.get("scaling", {}).get("points", []) if p["axis"] == axis and "img_per_s" in p]
        names = dict.fromkeys(p["series"] for p in points)
        lines = {name: [(p["x"], p["img_per_s"]) for p in points if p["series"] == name] for name in names}
        if draw(ax, lines, "loader workers" if axis == "workers" else f"{axis} size", "images / s", f"vs {axis}"):
            ax.set(xscale="symlog", yscale="log")
            ax.legend(fontsize=8)
    rows = sections.get("degradation", {}).get("rows", [])
    lines = {}
    for patch in dict.fromkeys(r["patch"] for r in rows):
        lines[f"device, {patch} px"] = [(r["batch"], r["device_mpix_per_s"]) for r in rows if r["patch"] == patch]
        lines[f"Pillow pool, {patch} px"] = [
            (r["batch"], r["cpu_pool_mpix_per_s"]) for r in rows if r["patch"] == patch
        ]
    if draw(axes.flat[3], lines, "batch size", "MPix / s", "degradation (noise + JPEG)"):
        axes.flat[3].set(xscale="log", yscale="log")
        axes.flat[3].legend(fontsize=8)
    figure.suptitle(f"{result['device']['device']} ({result['device']['name']}), torch {result['versions']['torch']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def run_section(name: str, shards: Path, device: torch.device, settings: SuiteConfig, out: Path) -> dict:
    """One section's result dict (raises on failure; the caller records the error and goes on)."""
    from pipeline.valset import read_split_images

    base = load_config(device.type, None, [f"run.device={device.type}", *settings.train_sets]).loader
    if name == "stages":
        rows = stages(shards, device, base.patch_size, base.batch_size, settings.repeats, settings.stage_limit)
        rows += loaders(shards, device, base, settings.loader_steps, settings.repeats, settings.backends)
        return {"rows": rows}
    if name in ("degradation", "scaling"):
        images = read_split_images(shards, "train", limit=settings.stage_limit)
        if name == "scaling":
            return curves(shards, images, device, settings)
        grid = (settings.degrade_batches, settings.degrade_patches)
        return sweep(images, *grid, settings.repeats, device, call_s=settings.call_s)
    if name == "training":
        return data_wait(shards, device, settings)
    command = [sys.executable, "-m", "bench", "infer", *settings.infer_args, "--device", str(device)]
    command += ["--out", str(out.with_name(out.stem + "_infer.json"))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=settings.infer_timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"`{' '.join(command)}` ran past {settings.infer_timeout_s} s"}
    if done.returncode != 0:
        return {"status": "error", "error": f"`{' '.join(command)}` exited {done.returncode}: {done.stderr[-2000:]}"}
    return {"command": " ".join(command[1:]), "file": command[-1], "result": json.loads(Path(command[-1]).read_text())}


def markdown(result: dict) -> str:
    """All sections as markdown, headed by the command, device and versions."""
    device, versions = result["device"], result["versions"]
    load = ", ".join(f"{v:.1f}" for v in device["load_average"])
    said = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    machine_line = f"Device: {device['device']} ({device['name']}), {device['cpu_cores']} CPU cores, "
    machine_line += f"{device['torch_threads']} torch threads, load average at start {load}; {said}."
    lines = [f"`{result['command']}`", "", f"{machine_line} {result.get('seconds', 0):.0f} s in all.", ""]
    render = {"stages": lambda s: stages_markdown(s["rows"]), "degradation": sweep_markdown}
    render |= {"scaling": curves_markdown, "training": data_wait_markdown}
    render["infer"] = lambda s: f"see `{s['file']}` and its .md"
    for name, section in result["sections"].items():
        text = render[name](section) if section["status"] == "ok" else f"{section['status']}: {section.get('error')}"
        lines += [f"### {name} ({section['seconds']:.0f} s)", "", text, ""]
    return "\n".join(lines)


def run_suite(sections, shards: Path, device: torch.device, settings: SuiteConfig, out: Path, command: str) -> dict:
    """Run `sections` in order, writing the JSON, markdown and plot after each; returns the result."""
    result = header(device, settings, shards, command)
    suite_start = time.perf_counter()
    for name in sections:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            section = run_section(name, shards, device, settings, out)
        except Exception as err:  # one broken section must not lose the others' measurements
            section = {"status": "error", "error": f"{type(err).__name__}: {err}"}
            print(f"section {name} failed: {section['error']}", file=sys.stderr, flush=True)
        section.setdefault("status", "ok")
        section["seconds"] = round(time.perf_counter() - start, 1)
        result["sections"][name] = section
        result["seconds"] = round(time.perf_counter() - suite_start, 1)
        if {"scaling", "degradation"} & {n for n, s in result["sections"].items() if s["status"] == "ok"}:
            plot(result, out.with_suffix(".png"))
            result.setdefault("files", {})["plot"] = str(out.with_suffix(".png"))
        save(result, out, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="FILE.json; FILE.md and FILE.png go beside it")
    parser.add_argument("--quick", action="store_true", help="fewer points and steps (minutes on a 2-core CPU)")
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: a generated set)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if (unknown := [s for s in sections if s not in SECTIONS]) or not sections:
        parser.error(f"--sections: unknown {unknown or 'empty'}; choose from {', '.join(SECTIONS)}")
    if args.out.suffix != ".json":
        parser.error(f"--out must name a .json file, got {args.out}")
    device = resolve_device(args.device)
    settings = suite_config(device.type, args.quick)
    shards = prepare_shards(args.shards, args.out, settings)
    command = "python -m bench suite " + " ".join(argv if argv is not None else sys.argv[2:])
    result = run_suite(sections, shards, device, settings, args.out, command)
    print(f"wrote {args.out}, " + ", ".join(result.get("files", {}).values()))
    return 1 if any(s.get("status") == "error" for s in result["sections"].values()) else 0
