"""The whole training step (degrade -> forward -> backward -> AdamW -> EMA) per batch size: img/s, ops, GPU-busy.

`python -m bench.step --config release/gpu.yaml --batches 32,64,128,256 --out out/bench/step.json` builds the
trainer's state (`train.step.build_state`) for each batch size on `--device` and times `--steps` steps of
`train.step.train_step` on resident clean patches (no loader: the step alone), after a warm-up. It reports img/s,
the aten ops one step launches (`pipeline.sync.OpCounter`), and on CUDA the kernel-busy share: the profiler's sum of
CUDA kernel time over the wall time of the same steps (what launch overhead and host syncs leave idle). The chosen
batch is the smallest within 5% of the best img/s (larger batches cost memory and optimisation steps for little
speed); the GPU script sets the run's batch from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.timing import repeat_times, sync
from pipeline.device import resolve_device
from pipeline.sync import OpCounter
from train import amp_dtype, build_state, load_config, train_step


def measure(config: Path | None, sets: list[str], batch: int, steps: int, device: torch.device) -> dict:
    cfg = load_config(device.type, config, sets + [f"loader.batch_size={batch}", "model.init="])
    state = build_state(cfg, device)
    size = cfg.loader.patch_size
    clean = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    dtype = amp_dtype(cfg.run.amp, device)

    def step() -> None:
        train_step(state, clean, cfg, cfg.optim.lr, dtype)
        state.step += 1

    for _ in range(3):  # warm-up: lazy optimizer state, cuDNN autotuning, compiled codec kernels
        step()
    with OpCounter() as counter:
        step()
    times = repeat_times(step, steps, device, warmup=0)
    row = {
        "batch": batch,
        "patch": size,
        "img_per_s": batch / statistics.median(times),
        "ops_per_step": counter.total,
        "top_ops": dict(counter.counts.most_common(6)),
        "step_s": times,
    }
    if device.type == "cuda":
        row["kernel_busy_share"] = kernel_busy_share(step, device)
    return row


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


def choose(rows: list[dict]) -> int:
    best = max(row["img_per_s"] for row in rows)
    return min(row["batch"] for row in rows if row["img_per_s"] >= 0.95 * best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="trainer YAML (default: the device's defaults)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a.b=v override, repeatable")
    parser.add_argument("--batches", default="32,64,128")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = [measure(args.config, args.sets, int(b), args.steps, device) for b in args.batches.split(",")]
    result = {
        "device": str(device),
        "config": str(args.config),
        "sets": args.sets,
        "rows": rows,
        "chosen_batch": choose(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        busy = f", kernel-busy {row['kernel_busy_share']:.0%}" if "kernel_busy_share" in row else ""
        print(f"batch {row['batch']:4d}: {row['img_per_s']:8.1f} img/s, {row['ops_per_step']} ops per step{busy}")
    print(f"chosen batch: {result['chosen_batch']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
