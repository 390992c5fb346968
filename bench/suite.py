"""Every throughput benchmark of the project in one run: `python -m bench.suite [--quick] --out FILE.json`.

Sections (`--sections`, all by default): `stages` (bench.pipeline: read, decode, crop, degrade, loaders end to
end), `degradation` (device MPix/s per batch x patch against Pillow/libjpeg on all cores), `scaling` (images/s
versus workers, batch and patch size), `training` (a short real training run per loader backend with the trainer's
own data-wait share, and the loader's ceiling alone), `infer` (`python -m bench.infer`, when that module exists).
Writes FILE.json (device, versions, config, medians and raw times), FILE.md (tables) and FILE.png (curves), after
every section, so a run cut short keeps what it measured. Without `--shards` it benchmarks a dead-leaves set it
generates once next to FILE (`shards.synth`, no downloads). `--quick` is sized to finish in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import report
from bench.config import SuiteConfig, suite_config
from pipeline.device import resolve_device
from train import TrainConfig, load_config

SECTIONS = ("stages", "degradation", "scaling", "training", "infer")


def training_config(device: torch.device, settings: SuiteConfig) -> TrainConfig:
    """The device's default training config with the suite's extra overrides: the base every section varies."""

    return load_config(device.type, None, [f"run.device={device.type}", *settings.train_sets])


def prepare_shards(shards: Path | None, out: Path, settings: SuiteConfig) -> Path:
    """The shards to benchmark: `shards` as given, else a synthetic set made once beside the output."""
    if shards is not None:
        if not (shards / "manifest.json").is_file():
            raise SystemExit(f"--shards {shards}: no manifest.json there (pack a folder with `python -m shards.pack`)")
        return shards
    synth_dir = out.parent / f"bench_shards_synth{settings.synth_count}"
    if not (synth_dir / "manifest.json").is_file():
        from shards.synth import synth

        min_shards = max(8, max(settings.curve_workers, default=1))
        print(f"generating {settings.synth_count} dead-leaves images into {synth_dir} (once)", flush=True)
        synth(synth_dir, settings.synth_count, size=256, workers=os.cpu_count() or 1, min_shards=min_shards)
    return synth_dir


def run_section(name: str, shards: Path, device: torch.device, settings: SuiteConfig, out: Path) -> dict:
    """One section's result dict (raises on failure; the caller records the error and goes on)."""
    from bench.stall import backend_ready
    from pipeline.valset import read_split_images

    base = training_config(device, settings).loader
    ready = tuple(b for b in settings.backends if not backend_ready(b))
    if name == "stages":
        from bench.pipeline import bench_loaders, bench_stages

        rows = bench_stages(shards, device, base.patch_size, base.batch_size, settings.repeats, settings.stage_limit)
        return {"rows": rows + bench_loaders(shards, device, base, settings.loader_steps, settings.repeats, ready)}
    if name == "degradation":
        from bench.degradation import sweep

        images = read_split_images(shards, "train", limit=settings.stage_limit)
        return sweep(
            images, settings.degrade_batches, settings.degrade_patches, settings.repeats, device, call_s=settings.call_s
        )
    if name == "scaling":
        from bench.scaling import curves

        images = read_split_images(shards, "train", limit=settings.stage_limit)
        return curves(shards, images, base, device, settings)
    if name == "training":
        from bench.stall import stall

        return stall(shards, device, settings)
    if name == "infer":
        return run_infer(out.with_name(out.stem + "_infer.json"), device, settings.infer_args, settings.infer_timeout_s)
    raise ValueError(f"unknown section '{name}': choose from {', '.join(SECTIONS)}")


def run_infer(out: Path, device: torch.device, args: tuple[str, ...], timeout_s: int) -> dict:
    """`python -m bench.infer ARGS --device D --out OUT` in a subprocess (its own threads and memory)."""
    if importlib.util.find_spec("bench.infer") is None:
        return {"status": "skipped", "reason": "bench/infer.py is not in this checkout"}
    command = [sys.executable, "-m", "bench.infer", *args, "--device", str(device), "--out", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"`{' '.join(command)}` ran past {timeout_s} s"}
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        return {"status": "error", "error": f"`{' '.join(command)}` exited {done.returncode}: {tail}"}
    return {"command": " ".join(command[1:]), "file": str(out), "result": json.loads(out.read_text())}


def run_suite(
    sections: tuple[str, ...], shards: Path, device: torch.device, settings: SuiteConfig, out: Path, command: str
) -> dict:
    """Run `sections` in order, writing the JSON, markdown and plot after each; returns the result."""
    result = report.header(device, settings, training_config(device, settings), shards, command)
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
        report.write(result, out)
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
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: unknown {unknown or 'empty'}; choose from {', '.join(SECTIONS)}")
    if args.out.suffix != ".json":
        parser.error(f"--out must name a .json file, got {args.out}")
    device = resolve_device(args.device)
    settings = suite_config(device.type, args.quick)
    shards = prepare_shards(args.shards, args.out, settings)
    command = "python -m bench.suite " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run_suite(sections, shards, device, settings, args.out, command)
    print(report.markdown(result))
    print(f"wrote {args.out}, " + ", ".join(result.get("files", {}).values()))
    return 1 if any(s.get("status") == "error" for s in result["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
