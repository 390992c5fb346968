"""Training-step speed per precision mode: `python -m bench.train_modes [--threads 1] [--compile] --out FILE.json`.

The release architecture (NAFNet width 16 with the strength control), AdamW, L1 loss on random patches,
batch 8 of 96 px by default, on this machine's CPU (or `--device`). Modes: fp32, fp32 channels_last, bf16 autocast,
bf16 + channels_last, and with `--compile` torch.compile in fp32. Rounds interleave the modes (a noisy, shared machine
slows them alike); each mode's figure is the median step over its rounds after warm-up. Also records whether the CPU
has native bf16 (`train.precision.cpu_native_bf16`), which is what `run.amp=auto` decides on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.timing import sync
from model import create_model
from train import cpu_native_bf16

MODES = {
    "fp32": (False, False, False),
    "fp32_channels_last": (False, True, False),
    "bf16": (True, False, False),
    "bf16_channels_last": (True, True, False),
    "fp32_compile": (False, False, True),
}  # (bf16, cl, compile)


def make_step(mode: str, device: torch.device, batch: int, patch: int):
    bf16, channels_last, compile_ = MODES[mode]
    torch.manual_seed(0)
    model = create_model("nafnet", width=16, conditioned=True).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compile_ else model
    degraded, clean = torch.rand(2, batch, 3, patch, patch, device=device).unbind(0)
    if channels_last:
        degraded = degraded.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            restored = forward(degraded)
        loss = (restored.float() - clean).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run(modes: list[str], device: torch.device, batch: int, patch: int, rounds: int, steps: int) -> dict:
    steps_of = {mode: make_step(mode, device, batch, patch) for mode in modes}
    for step in steps_of.values():  # warm-up: compilation, allocator, oneDNN primitive caches
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, step in steps_of.items():
            for _ in range(steps):
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                times[mode].append(time.perf_counter() - start)
    pixels = batch * patch * patch
    base = statistics.median(times[modes[0]])
    return {
        mode: {
            "median_step_s": statistics.median(t),
            "mpix_per_s": pixels / statistics.median(t) / 1e6,
            "vs_" + modes[0]: base / statistics.median(t),
            "steps": len(t),
        }
        for mode, t in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode and round")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation on a CPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m for m in MODES if args.compile or not MODES[m][2]]
    device = torch.device(args.device)
    result = {
        "device": args.device,
        "threads": args.threads,
        "batch": args.batch,
        "patch": args.patch,
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "modes": run(modes, device, args.batch, args.patch, args.rounds, args.steps),
    }
    for mode, row in result["modes"].items():
        print(
            f"{mode:>20}: {row['median_step_s'] * 1000:7.0f} ms/step  {row['mpix_per_s']:.3f} MPix/s  "
            f"x{row['vs_fp32']:.2f} vs fp32"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
