"""Strip a training checkpoint down to what inference needs: `python -m model.slim CKPT OUT [--fp16]`.

Keeps the EMA weights (or the raw ones when there are none) as `model`, with `model_name`, `model_kwargs`, the
training config and step; drops optimizer, scaler and RNG states. `load_model` reads the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model import select_state, strip_prefixes


def slim(path: str | Path, out: str | Path, fp16: bool = False) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(slimmed, out)
    return slimmed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp16", action="store_true", help="store float weights as float16 (half the size)")
    args = parser.parse_args()
    slimmed = slim(args.checkpoint, args.out, args.fp16)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, step {slimmed['step']})")


if __name__ == "__main__":
    main()
