"""Train a restoration model on shards.

python train/run.py --shards DIR [--config FILE.yaml] [--set a.b=v ...] [--out RUN_DIR] [--resume auto|PATH]
torchrun --nproc_per_node N train/run.py --shards DIR ...      (DDP: N processes, NCCL on CUDA, gloo on the CPU)

With no --config the defaults fit the device found (CUDA, then MPS, then CPU). A resumed run starts from the config
saved in its checkpoint, then applies --config and --set. `--resume auto` continues from RUN_DIR/last.pt when
there is one (and starts fresh otherwise); it needs --out. Under torchrun every rank trains on its own shards and
degradations with batch loader.batch_size; rank 0 logs, validates and checkpoints (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from pipeline.command import CommandError, run_command
from pipeline.device import resolve_device
from pipeline.health import DataSkipLimit
from train import checkpoint, distributed
from train.config import load_config
from train.loop import Stopped, fit

LOCK = ".lock"  # in the run folder: the flock and the PID of the trainer holding it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, type=Path, help="shard folder (python -m shards.pack / synth)")
    parser.add_argument("--config", type=Path, help="YAML file overriding the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="A.B=V", help="override one value")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<time>)")
    parser.add_argument("--resume", help="auto (RUN_DIR/last.pt if present) or a checkpoint path")
    args = parser.parse_args(argv)
    if args.resume == "auto" and args.out is None:
        parser.error("--resume auto needs --out RUN_DIR (the run folder to continue)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    lock = lock_run_dir(run_dir) if os.environ.get("RANK", "0") == "0" else None  # held while main runs
    resume = checkpoint.resolve_resume(args.resume, run_dir)
    if resume is None and (run_dir / "last.pt").exists():
        raise SystemExit(f"{run_dir} already holds a run (last.pt): pass --resume auto, or choose another --out")
    saved = checkpoint.load(resume) if resume is not None else None
    if resume is not None and saved is not None:
        try:
            checkpoint.check_world_size(saved, distributed.world_size_from_env(), resume)
        except ValueError as err:
            raise SystemExit(f"--resume: {err}") from None
    base = saved["config"] if saved is not None else None
    device_name = load_config("cpu", args.config, args.set, base).run.device
    cfg = load_config(resolve_device(device_name).type, args.config, args.set, base)
    env = distributed.init(resolve_device(cfg.run.device).type)
    finished = False
    try:
        result = fit(cfg, args.shards, run_dir, resume)
        finished = True
    except Stopped as err:  # a signal: last.pt is written; 130 for Ctrl+C, 143 for SIGTERM
        finished = True
        if env.is_main:
            print(f"train: {err} (run folder {run_dir})", file=sys.stderr)
        return 128 + err.signum
    except DataSkipLimit as err:  # too much unreadable data: a message, not a traceback (fit wrote last.pt first)
        last = run_dir / "last.pt"
        resume_from = f"; resume from {last} with --resume auto" if last.is_file() else ""
        raise SystemExit(f"train: stopped: {err}{resume_from}") from None
    finally:
        distributed.shutdown(env, clean=finished)
    if env.is_main:
        summary = f"val PSNR {result['psnr_model']:.2f} dB (input {result['psnr_input']:.2f})" if result else "no val"
        names = ["metrics.jsonl", "config.yaml", "samples/", "last.pt", "best.pt"]
        there = [name for name in names if (run_dir / name.rstrip("/")).exists()]  # only what the run wrote
        print(f"done: {summary}; run folder {run_dir}: {', '.join(there)}")
    del lock  # closing the file releases the flock (it would be released at exit anyway)
    return 0


def lock_run_dir(run_dir: Path) -> BinaryIO:
    """One run folder, one writer: an exclusive flock on RUN_DIR/.lock (released when the process ends, however it
    ends), holding the PID of the trainer that has it; a second trainer is refused with that PID."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+b")  # noqa: SIM115 (held open for the whole run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().decode(errors="replace").strip() or "unknown"
        handle.close()
        raise CommandError(
            f"{run_dir} is in use by another training (PID {pid}): wait for it to finish or stop it, or choose "
            "another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


if __name__ == "__main__":
    sys.exit(run_command(main, "train"))
