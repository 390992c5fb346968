"""Strip a training checkpoint down to what inference needs: `python -m model.slim CKPT OUT [--fp16]`.

Keeps the EMA weights (or the raw ones when there are none) as `model`, with `model_name`, `model_kwargs`, the
training config and step; drops optimizer, scaler and RNG states. The file carries the tensors' checksum
(`model.files`) and is written under a temporary name, then renamed. `load_model` reads the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from model import select_state, strip_prefixes
from model.files import read_checkpoint, with_checksum


def slim(path: str | Path, out: str | Path, fp16: bool = False) -> dict:
    checkpoint = read_checkpoint(path)
    state, name, kwargs = select_state(checkpoint, use_ema=True)
    if name is None:
        raise ValueError(f"{path} has no model name: only this project's checkpoints can be slimmed")
    weights = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in strip_prefixes(state).items()}
    slimmed = {
        "model": weights,
        "model_name": name,
        "model_kwargs": kwargs,
        "ema": None,
        "config": checkpoint.get("config"),
        "step": checkpoint.get("step"),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        torch.save(with_checksum(slimmed), partial)
        os.replace(partial, out)  # a failed write (a full disk) leaves the previous file whole
    finally:
        partial.unlink(missing_ok=True)
    return slimmed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp16", action="store_true", help="store float weights as float16 (half the size)")
    args = parser.parse_args(argv)
    try:
        slimmed = slim(args.checkpoint, args.out, args.fp16)
    except (ValueError, OSError) as err:  # model/ imports nothing: the same one line as pipeline.command prints
        print(f"python -m model.slim: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m model.slim: stopped (Ctrl+C)", file=sys.stderr)
        return 130
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, step {slimmed['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
