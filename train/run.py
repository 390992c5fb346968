"""Train a restoration model on shards.

python train/run.py --shards DIR [--config FILE.yaml] [--set a.b=v ...] [--out RUN_DIR] [--resume auto|PATH]

With no --config the defaults fit the device found (CUDA, then MPS, then CPU). `--resume auto` continues from
RUN_DIR/last.pt when there is one, with the run's saved config.yaml as the base (then --config, then --set).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from train.checkpoint import resolve_resume
from train.config import load_config
from train.loop import fit, pick_device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path, help="shard folder (python -m shards.pack / synth)")
    parser.add_argument("--config", type=Path, help="YAML file overriding the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="A.B=V", help="override one value")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<time>)")
    parser.add_argument("--resume", help="auto (RUN_DIR/last.pt if present) or a checkpoint path")
    args = parser.parse_args(argv)
    run_dir = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    resume = resolve_resume(args.resume, run_dir)
    device = pick_device(load_config("cpu", args.config, args.set).run.device)
    saved = run_dir / "config.yaml"
    base = saved if resume is not None and saved.is_file() and args.config is None else args.config
    cfg = load_config(device.type, base, args.set)
    result = fit(cfg, args.shards, run_dir, resume)
    summary = f"val PSNR {result['psnr_model']:.2f} dB (input {result['psnr_input']:.2f})" if result else "no val"
    print(f"done: {summary}; run folder {run_dir}: metrics.jsonl, config.yaml, samples/, last.pt, best.pt")


if __name__ == "__main__":
    main()
