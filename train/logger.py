"""Run logging: one JSON line per log step in RUN_DIR/metrics.jsonl, a progress bar, W&B (offline by default).

The progress bar is drawn only on a terminal; when stderr is a file or a pipe, each log step prints one plain line
instead (a redrawn bar would fill a log file with carriage-return updates).

Per step only device tensors are kept (no sync); `flush` at log steps does the `.item()` calls, computes img/s,
the data-wait share (time blocked on the loader / wall time of the window) and degradation statistics.
With several DDP ranks every rank keeps its losses and calls `flush` (the loss is averaged over ranks there, so all
see the same finite/not-finite verdict); only rank 0 writes anything. img/s counts the images of all ranks; the
degradation statistics and the data-wait share are rank 0's.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import warnings
from pathlib import Path

import torch

from pipeline.progress import progress
from train.config import TrainConfig, save_config, to_dict
from train.distributed import DistEnv, mean_over_ranks


class DeviceClock:
    """GPU-busy share from CUDA events: for each step, the device time from its first queued kernel to its last,
    summed over a log window and divided by the window's wall time. A GPU starved by the loader or by host work
    between steps shows as idle; gaps inside a step (a launch-bound step) do not: `bench step` measures those with
    the profiler. Off (None) on other devices. Reading the events waits for the window's last step: log steps only.
    """

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> torch.cuda.Event | None:
        if not self.enabled:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start: torch.cuda.Event | None) -> None:
        if start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((start, end))

    def take_seconds(self) -> float | None:
        """Device seconds of the steps since the last call (None when off)."""
        if not self.enabled or not self.pairs:
            return None
        self.pairs[-1][1].synchronize()
        seconds = sum(start.elapsed_time(end) for start, end in self.pairs) / 1000
        self.pairs = []
        return seconds


class RunLogger:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, start_step: int, device: torch.device, env: DistEnv | None = None
    ):
        self.env = env or DistEnv()
        self.cfg, self.main = cfg, self.env.is_main
        self.clock = DeviceClock(device)
        if not self.main:
            self._reset()
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        self.run_dir = run_dir
        _keep_rows_up_to(run_dir / "metrics.jsonl", start_step)  # a resumed run rewrites what came after its checkpoint
        self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.bar = progress(cfg.run.steps, "train", initial=start_step, every_s=None)
        self.warned: set[str] = set()
        self.wandb = _start_wandb(cfg, run_dir)
        ranks = f", {self.env.world_size} ranks (DDP)" if self.env.world_size > 1 else ""
        self.message(f"device {device}{ranks}, {torch.get_num_threads()} torch threads, start at step {start_step}")
        self._reset()

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.params: list[dict[str, torch.Tensor]] = []
        self.images, self.waited, self.window_start = 0, 0.0, time.perf_counter()

    def record(self, step: int, loss: torch.Tensor, params: dict, images: int, waited: float) -> None:
        self.losses.append(loss)
        self.params.append(params)
        self.images += images
        self.waited += waited
        if self.main:
            self.bar.update(1)

    def flush(self, step: int, lr: float) -> bool:
        """Write the window's line; returns False when the loss is not finite. Every rank calls it (a collective)."""
        if not self.losses:
            return True
        loss, input_loss = mean_over_ranks(torch.stack(self.losses).float().mean(0), self.env).tolist()
        if not self.main:
            self._reset()
            return math.isfinite(loss)
        seconds = time.perf_counter() - self.window_start
        images = self.images * self.env.world_size  # every rank draws the same batch size
        row = {"step": step, "loss": loss, "loss_input": input_loss, "lr": lr, "img_per_s": images / seconds}
        row["data_wait_share"] = self.waited / seconds
        if (busy := self.clock.take_seconds()) is not None:
            row["gpu_busy_share"] = busy / seconds
        row |= _degradation_stats(self.params)
        self._write(row)
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{row['img_per_s']:.1f}", wait=f"{row['data_wait_share']:.0%}")
        if self.wandb is not None:
            self.wandb.log(
                {f"train/{k}": v for k, v in row.items() if k != "step"} | _histograms(self.params), step=step
            )
        self._sanity_loss(step, loss, input_loss)
        self._reset()
        return math.isfinite(loss)

    def validation(self, step: int, result: dict) -> None:
        if not self.main:
            return
        self._write({"step": step, "val": result})
        for name, one in result.get("sets", {"val": result}).items():
            told = f", told sigma/quality {one['psnr_conditioned']:.2f}" if "psnr_conditioned" in one else ""
            psnr = f"PSNR {one['psnr_model']:.2f} dB (input {one['psnr_input']:.2f}{told})"
            self.bar.write(f"step {step}: {name}: {psnr}, SSIM {one['ssim_model']:.4f} (input {one['ssim_input']:.4f})")
        if "psnr_select" in result and len(result["sets"]) > 1:
            self.bar.write(
                f"step {step}: mean over the {len(result['sets'])} validation sets {result['psnr_select']:.2f} dB"
            )
        if self.wandb is not None:
            import wandb

            logged = {f"val/{k}": v for k, v in result.items() if isinstance(v, float)}
            for name, one in result.get("sets", {}).items():
                logged |= {f"val_{name}/{k}": v for k, v in one.items() if isinstance(v, float)}
            if "grid" in result:
                logged["val/samples"] = wandb.Image(result["grid"], caption="degraded | restored | clean")
            self.wandb.log(logged, step=step)
        if step >= self.cfg.run.sanity_steps and result["psnr_model"] < result["psnr_input"]:
            self._warn(
                "val",
                f"validation PSNR {result['psnr_model']:.2f} dB is still below the input's "
                f"{result['psnr_input']:.2f} dB after {step} steps",
            )

    def message(self, text: str) -> None:
        if not self.main:
            return
        self.bar.write(text)
        self._write({"message": text})

    def close(self) -> None:
        if not self.main:
            return
        self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()

    def _write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def _sanity_loss(self, step: int, loss: float, input_loss: float) -> None:
        """The curriculum makes the raw loss rise over time, so compare with the loss of doing nothing instead."""
        if step >= self.cfg.run.sanity_steps and loss >= input_loss:
            text = f"training loss {loss:.4f} is not below the degraded input's own loss {input_loss:.4f}"
            self._warn("loss", f"{text} after {step} steps: check the learning rate and the data")

    def _warn(self, kind: str, text: str) -> None:
        if kind in self.warned:
            return
        self.warned.add(kind)
        banner = "!" * 78
        self.bar.write(f"{banner}\nWARNING: {text}\n{banner}")
        self._write({"warning": text})
        warnings.warn(text, stacklevel=2)


def _keep_rows_up_to(path: Path, step: int) -> None:
    if not path.exists():
        return
    rows = path.read_text().splitlines()
    path.write_text("".join(row + "\n" for row in rows if step > 0 and json.loads(row).get("step", 0) <= step))


def _degradation_stats(params: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    sigma = torch.cat([p["sigma_255"] for p in params]).float()
    quality = torch.cat([p["quality"] for p in params]).float()
    double = torch.cat([p["quality2"] for p in params]) > 0
    noisy, jpeg = sigma > 0, quality > 0
    return {
        "share_noise": float(noisy.float().mean()),
        "share_jpeg": float(jpeg.float().mean()),
        "share_double_jpeg": float(double.float().mean()),
        "sigma_mean_255": float(sigma[noisy].mean()) if bool(noisy.any()) else 0.0,
        "sigma_max_255": float(sigma.max()),
        "quality_mean": float(quality[jpeg].mean()) if bool(jpeg.any()) else 0.0,
        "quality_min": float(quality[jpeg].min()) if bool(jpeg.any()) else 0.0,
    }


def _histograms(params: list[dict[str, torch.Tensor]]) -> dict:
    import wandb

    sigma = torch.cat([p["sigma_255"] for p in params]).float().cpu()
    quality = torch.cat([p["quality"] for p in params]).float().cpu()
    return {
        "train/sigma_255": wandb.Histogram(sigma[sigma > 0].numpy()) if bool((sigma > 0).any()) else 0,
        "train/quality": wandb.Histogram(quality[quality > 0].numpy()) if bool((quality > 0).any()) else 0,
    }


def _start_wandb(cfg: TrainConfig, run_dir: Path):
    """W&B run in RUN_DIR/wandb (offline unless log.wandb=online); None when off or not installed."""
    if cfg.log.wandb == "off":
        return None
    if cfg.log.wandb not in ("offline", "online"):
        raise ValueError(f"log.wandb must be offline, online or off, got '{cfg.log.wandb}'")
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb is not installed (pip install -e .[wandb]): logging to metrics.jsonl only", stacklevel=2)
        return None
    id_file = run_dir / "wandb_id.txt"
    resuming = id_file.exists() and (run_dir / "last.pt").exists()
    run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)
    id_file.write_text(run_id)
    return wandb.init(
        project=cfg.log.project,
        dir=str(run_dir),
        mode=cfg.log.wandb,
        id=run_id,
        resume="allow",
        config=to_dict(cfg),
        settings=wandb.Settings(console="off", silent=True),
    )
