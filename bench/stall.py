"""Does training wait for data? A short real training run per loader backend, and each loader's ceiling alone.

The trainer measures, every step, how long it blocked on `next(loader)` (`train.loop._loop`), and writes the
window's share of wall time as `data_wait_share` in `RUN_DIR/metrics.jsonl` (`train.logger`). Here `train.loop.fit`
runs the device's default model and batch (`train.config.load_config`) for a few hundred steps per backend and those
rows are read back: the first window holds worker start-up and the shuffle-buffer fill, so the steady-state figure
is the median over the later windows; the run-wide share is also given. The loader ceiling is the same loader
iterated with no model at all (images/s it can deliver to the device); ceiling / training img/s is the headroom.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
from pathlib import Path

import torch

from bench.config import SuiteConfig
from bench.timing import measure, significant
from pipeline.config import LoaderConfig
from pipeline.loader import dali_available, make_loader
from train import fit, load_config, to_dict

TARGET_DATA_WAIT_SHARE = 0.02  # on a GPU, at the default training config


def backend_ready(backend: str) -> str:
    """ "" when `backend` can run here, else why not (DALI: not installed, or installed but not importable)."""
    if backend == "torch":
        return ""
    if backend != "dali":
        return f"unknown loader backend '{backend}'"
    if not dali_available():
        return "NVIDIA DALI is not installed (pip install -e .[dali])"
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401 (the import is the check)
    except Exception as err:  # a broken DALI install must be reported, not crash the suite
        return f"NVIDIA DALI does not import: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return ""


def loader_ceiling(shards: Path, cfg: LoaderConfig, device: torch.device, steps: int, repeats: int) -> dict:
    """Images/s of the loader alone (no model): `steps` batches per timed call; the warm-up call absorbs start-up."""
    loader = make_loader(shards, "train", cfg, device)
    try:
        return measure(
            lambda: [next(loader) for _ in range(steps)], steps * cfg.batch_size, repeats, device, cfg.patch_size**2
        )
    finally:
        loader.close()  # ends the DataLoader workers / DALI pipeline before the next measurement starts
        gc.collect()


def training_sets(backend: str, device: torch.device, steps: int, log_every: int, extra: tuple[str, ...]) -> list[str]:
    """`--set` overrides of a throughput run: the device's defaults, only logging, checkpoints and W&B turned down."""
    big = steps * 10 + 1000
    return [
        f"run.device={device.type}",
        f"loader.backend={backend}",
        f"run.steps={big}",
        f"run.log_every={log_every}",
        f"run.val_every={big}",
        f"run.ckpt_every={big}",
        f"run.sanity_steps={big}",
        "log.wandb=off",
        *extra,
    ]


def summarise(rows: list[dict], batch_size: int) -> dict:
    """Steady-state (windows after the first) medians, the first window, and the run-wide data-wait share."""
    windows = [r for r in rows if "data_wait_share" in r]
    if not windows:
        raise ValueError("the training run wrote no metrics rows (fewer steps than run.log_every?)")
    steps = [w["step"] - prev for w, prev in zip(windows, [0] + [w["step"] for w in windows[:-1]], strict=True)]
    seconds = [n * batch_size / w["img_per_s"] for n, w in zip(steps, windows, strict=True)]
    steady = windows[1:] or windows
    return {
        "img_per_s": round(statistics.median(w["img_per_s"] for w in steady), 2),
        "data_wait_share": round(statistics.median(w["data_wait_share"] for w in steady), 5),
        "first_window_data_wait_share": round(windows[0]["data_wait_share"], 5),
        "run_data_wait_share": round(
            sum(w["data_wait_share"] * s for w, s in zip(windows, seconds, strict=True)) / sum(seconds), 5
        ),
        "windows": [{k: round(w[k], 5) for k in ("step", "img_per_s", "data_wait_share")} for w in windows],
    }


def run_training(
    shards: Path, backend: str, device: torch.device, steps: int, log_every: int, extra: tuple[str, ...] = ()
) -> tuple[dict, LoaderConfig]:
    """Train `steps` steps with `train.loop.fit` in a scratch folder; returns the metrics summary and loader config."""

    cfg = load_config(device.type, None, training_sets(backend, device, steps, log_every, extra))
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        run_dir = Path(tmp) / "run"
        fit(cfg, shards, run_dir, stop_after=steps)
        train_threads = torch.get_num_threads()
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    torch.set_num_threads(threads)  # fit sets the CPU thread count for itself; later sections keep the suite's
    last = max((r["step"] for r in rows if "data_wait_share" in r), default=0)
    if last < steps:  # fit returns early only when a signal asked it to stop: the user wants the suite to stop too
        raise KeyboardInterrupt(f"the {backend} training run was stopped by a signal at step {last} of {steps}")
    summary = summarise(rows, cfg.loader.batch_size) | {
        "steps": steps,
        "log_every": log_every,
        "model": to_dict(cfg)["model"],
        "loader": to_dict(cfg)["loader"],
        "amp": cfg.run.amp,
        "torch_threads": train_threads,
    }
    return summary, cfg.loader


def stall(shards: Path, device: torch.device, cfg: SuiteConfig) -> dict:
    """Per backend: the real training's data-wait share and img/s, the loader ceiling, the headroom between them."""
    runs = []
    for backend in cfg.backends:
        reason = backend_ready(backend)
        if reason:
            runs.append({"backend": backend, "status": "skipped", "reason": reason})
            continue
        train, loader_cfg = run_training(shards, backend, device, cfg.train_steps, cfg.train_log_every, cfg.train_sets)
        ceiling = loader_ceiling(shards, loader_cfg, device, cfg.loader_steps, cfg.repeats)
        runs.append(
            {
                "backend": backend,
                "status": "ok",
                "train": train,
                "ceiling": ceiling,
                "headroom": significant(ceiling["img_per_s"] / train["img_per_s"]),
                "meets_target": train["data_wait_share"] <= TARGET_DATA_WAIT_SHARE,
            }
        )
    return {
        "target_data_wait_share": TARGET_DATA_WAIT_SHARE,
        "target_note": "a GPU target, default training config",
        "runs": runs,
    }


def markdown(section: dict) -> str:
    lines = [
        "| loader | train img/s (steady) | data-wait share: steady / first window / whole run | "
        "loader ceiling img/s | headroom |",
        "|---|---:|---|---:|---:|",
    ]
    for run in section["runs"]:
        if run["status"] != "ok":
            lines.append(f"| {run['backend']} | {run['status']}: {run['reason']} | | | |")
            continue
        t = run["train"]
        shares = " / ".join(
            f"{t[k]:.2%}" for k in ("data_wait_share", "first_window_data_wait_share", "run_data_wait_share")
        )
        lines.append(
            f"| {run['backend']} ({t['loader']['workers']} workers) | {t['img_per_s']:.1f} | {shares} | "
            f"{run['ceiling']['img_per_s']:.1f} | {run['headroom']:.1f}x |"
        )
    return "\n".join(lines)
