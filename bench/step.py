"""The training step: `python -m bench step --out FILE.json [--config YAML] [--batches 32,64] [--modes fp32,bf16]`.

The whole step (degrade -> forward -> backward -> AdamW -> EMA, `train.step.train_step`) of the trainer's own state
(`train.step.build_state`), on resident clean patches (no loader: the step alone), for each batch size and precision
mode (`MODES`: trainer overrides for amp, channels_last and torch.compile). Every (mode, batch) is built first, then
timed in interleaved rounds of `--steps` steps after a warm-up (lazy optimizer state, autotuning, compilation); on
a CPU with the trainer's thread rule (`train.step.cpu_threads`, so `--set run.threads=1` pins one thread). Each row:
img/s and MPix/s of the median round, the ratio to the first mode, the aten ops one step launches
(`pipeline.sync.OpCounter`), and on CUDA the kernel-busy share: the profiler's CUDA kernel time over the wall time
of the same steps (what launch overhead and host syncs leave idle). The chosen batch is the smallest within 5% of
the best img/s of the first mode (larger batches cost memory and optimisation steps for little speed).

`data_wait` (the suite's `training` section) asks whether training waits for data: a short real run of
`train.loop.fit` per loader backend, whose own per-window data-wait share (`metrics.jsonl`) is read back (the first
window holds worker start-up; the steady figure is the median of the later ones), and the loader's ceiling alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import interleave, machine, rates, save, significant, sync, table
from pipeline.device import resolve_device
from pipeline.sync import OpCounter
from train import amp_dtype, build_state, cpu_threads, fit, load_config, to_dict, train_step

MODES = {
    "default": [],
    "fp32": ["run.amp=off", "run.channels_last=false"],
    "fp32_channels_last": ["run.amp=off", "run.channels_last=true"],
    "bf16": ["run.amp=bf16", "run.channels_last=false"],
    "bf16_channels_last": ["run.amp=bf16", "run.channels_last=true"],
    "fp32_compile": ["run.amp=off", "run.channels_last=false", "run.compile=true"],
}
TARGET_DATA_WAIT_SHARE = 0.02  # on a GPU, at the default training config


def make_step(config: Path | None, sets: list[str], device: torch.device):
    """(one-step callable, config) for the trainer's state under `sets`."""
    cfg = load_config(device.type, config, [f"run.device={device.type}", "model.init=", *sets])
    state = build_state(cfg, device)
    size, batch = cfg.loader.patch_size, cfg.loader.batch_size
    clean = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    dtype = amp_dtype(cfg.run.amp, device)

    def step() -> None:
        train_step(state, clean, cfg, cfg.optim.lr, dtype)
        state.step += 1

    return step, cfg


def kernel_busy_share(step, device: torch.device, steps: int = 5) -> float:
    """Sum of CUDA kernel time over wall time for `steps` steps, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall_us = (time.perf_counter() - start) * 1e6
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return kernel_us / wall_us


def step_rates(
    config: Path | None, sets: list[str], modes: list[str], batches: list[int], steps: int, rounds: int, device
) -> list[dict]:
    """One row per (mode, batch), timed in interleaved rounds (see the module docstring)."""
    threads = torch.get_num_threads()
    built = {}
    for mode in modes:
        for batch in batches:
            built[(mode, batch)] = make_step(config, [*sets, *MODES[mode], f"loader.batch_size={batch}"], device)
    if device.type == "cpu":  # the trainer's CPU thread rule, so the step runs as in training
        torch.set_num_threads(cpu_threads(next(iter(built.values()))[1]))
    try:
        ops = {}
        for key, (step, _) in built.items():
            for _ in range(3):  # warm-up: lazy optimizer state, cuDNN autotuning, compiled kernels
                step()
            with OpCounter() as counter:
                step()
            ops[key] = counter
        calls = {key: (lambda step=step: [step() for _ in range(steps)]) for key, (step, _) in built.items()}
        times = interleave(calls, rounds, device, warmup=0)
        rows = []
        for (mode, batch), (step, cfg) in built.items():
            patch = cfg.loader.patch_size
            row = {"mode": mode, "batch": batch, "patch": patch, "amp": str(amp_dtype(cfg.run.amp, device) or "fp32")}
            row |= rates(times[(mode, batch)], steps * batch, patch * patch) | {"steps_per_round": steps}
            row |= {"ops_per_step": ops[(mode, batch)].total, "top_ops": dict(ops[(mode, batch)].counts.most_common(6))}
            row["torch_threads"] = torch.get_num_threads()
            if device.type == "cuda":
                row["kernel_busy_share"] = kernel_busy_share(step, device)
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        first = next(r for r in rows if r["mode"] == modes[0] and r["batch"] == row["batch"])
        row["vs_first_mode"] = significant(row["img_per_s"] / first["img_per_s"])
    return rows


def choose(rows: list[dict]) -> int:
    """The smallest batch within 5% of the best img/s (of the first mode)."""
    mine = [row for row in rows if row["mode"] == rows[0]["mode"]]
    best = max(row["img_per_s"] for row in mine)
    return min(row["batch"] for row in mine if row["img_per_s"] >= 0.95 * best)


def training_sets(backend: str, device: torch.device, steps: int, log_every: int, extra: tuple[str, ...]) -> list[str]:
    """`--set` overrides of a throughput run: the device's defaults, only logging, checkpoints and W&B turned down."""
    big = steps * 10 + 1000
    turned_down = [f"run.{key}={big}" for key in ("steps", "val_every", "ckpt_every", "sanity_steps")]
    logging = [f"run.log_every={log_every}", "log.wandb=off"]
    return [f"run.device={device.type}", f"loader.backend={backend}", *turned_down, *logging, *extra]


def summarise(rows: list[dict], batch_size: int) -> dict:
    """Steady-state (windows after the first) medians, the first window, and the run-wide data-wait share."""
    windows = [r for r in rows if "data_wait_share" in r]
    if not windows:
        raise ValueError("the training run wrote no metrics rows (fewer steps than run.log_every?)")
    steps = [w["step"] - prev for w, prev in zip(windows, [0] + [w["step"] for w in windows[:-1]], strict=True)]
    seconds = [n * batch_size / w["img_per_s"] for n, w in zip(steps, windows, strict=True)]
    steady = windows[1:] or windows
    weighted = sum(w["data_wait_share"] * s for w, s in zip(windows, seconds, strict=True)) / sum(seconds)
    return {
        "img_per_s": round(statistics.median(w["img_per_s"] for w in steady), 2),
        "data_wait_share": round(statistics.median(w["data_wait_share"] for w in steady), 5),
        "first_window_data_wait_share": round(windows[0]["data_wait_share"], 5),
        "run_data_wait_share": round(weighted, 5),
        "windows": [{k: round(w[k], 5) for k in ("step", "img_per_s", "data_wait_share")} for w in windows],
    }


def run_training(shards: Path, backend: str, device: torch.device, steps: int, log_every: int, extra=()):
    """Train `steps` steps with `train.fit` in a scratch folder; returns the metrics summary and loader config."""
    cfg = load_config(device.type, None, training_sets(backend, device, steps, log_every, extra))
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        fit(cfg, shards, Path(tmp) / "run", stop_after=steps)
        train_threads = torch.get_num_threads()
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    torch.set_num_threads(threads)  # fit sets the CPU thread count for itself; later measurements keep the caller's
    last = max((r["step"] for r in rows if "data_wait_share" in r), default=0)
    if last < steps:  # fit returns early only when a signal asked it to stop: the user wants the benchmark to stop
        raise KeyboardInterrupt(f"the {backend} training run was stopped by a signal at step {last} of {steps}")
    described = {"model": to_dict(cfg)["model"], "loader": to_dict(cfg)["loader"], "amp": cfg.run.amp}
    summary = summarise(rows, cfg.loader.batch_size) | {"steps": steps, "log_every": log_every} | described
    return summary | {"torch_threads": train_threads}, cfg.loader


def data_wait(shards: Path, device: torch.device, settings) -> dict:
    """Per backend: the real training's data-wait share and img/s, the loader ceiling, the headroom between them."""
    from bench.data import backend_ready, loader_ceiling

    runs = []
    for backend in settings.backends:
        if reason := backend_ready(backend):
            runs.append({"backend": backend, "status": "skipped", "reason": reason})
            continue
        steps, every = settings.train_steps, settings.train_log_every
        train, loader_cfg = run_training(shards, backend, device, steps, every, settings.train_sets)
        ceiling = loader_ceiling(shards, loader_cfg, device, settings.loader_steps, settings.repeats)
        headroom = significant(ceiling["img_per_s"] / train["img_per_s"])
        meets = train["data_wait_share"] <= TARGET_DATA_WAIT_SHARE
        runs.append({"backend": backend, "status": "ok", "train": train, "ceiling": ceiling})
        runs[-1] |= {"headroom": headroom, "meets_target": meets}
    target = {"target_data_wait_share": TARGET_DATA_WAIT_SHARE, "target_note": "a GPU target, default training config"}
    return target | {"runs": runs}


def data_wait_markdown(section: dict) -> str:
    def shares(run: dict) -> str:
        keys = ("data_wait_share", "first_window_data_wait_share", "run_data_wait_share")
        return " / ".join(f"{run['train'][k]:.2%}" for k in keys) if run["status"] == "ok" else ""

    def loader(run: dict) -> str:
        return f"{run['backend']} ({run['train']['loader']['workers']} workers)" if "train" in run else run["backend"]

    columns = {
        "loader": loader,
        "train img/s (steady)": lambda r: r["train"]["img_per_s"] if "train" in r else f"{r['status']}: {r['reason']}",
        "data-wait share: steady / first window / whole run": shares,
        "loader ceiling img/s": lambda r: r["ceiling"]["img_per_s"] if "ceiling" in r else "",
        "headroom": lambda r: f"{r['headroom']:.1f}x" if "headroom" in r else "",
    }
    return table(section["runs"], columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="FILE.json; FILE.md beside it")
    parser.add_argument("--config", type=Path, default=None, help="trainer YAML (default: the device's defaults)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a.b=v override, repeatable")
    parser.add_argument("--batches", default="32,64,128")
    parser.add_argument("--modes", default="default", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per (mode, batch) and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    device = resolve_device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    rows = step_rates(args.config, args.sets, modes, batches, args.steps, args.rounds, device)
    result = machine(device) | {"config": str(args.config), "sets": args.sets, "rows": rows}
    result["chosen_batch"] = choose(rows)
    columns = {"mode": "mode", "batch": "batch", "patch": "patch", "amp": "amp", "img/s": "img_per_s"}
    columns |= {"MPix/s": "mpix_per_s", f"x {modes[0]}": "vs_first_mode", "ops per step": "ops_per_step"}
    columns["kernel-busy"] = lambda r: f"{r['kernel_busy_share']:.0%}" if "kernel_busy_share" in r else "-"
    save(result, args.out, table(rows, columns) + f"\n\nchosen batch: {result['chosen_batch']}")
    return 0
