"""`fit`: the training loop, read top to bottom.

lr = lr_at(step) -> clean batch from the loader -> degrade on the device -> autocast forward -> loss -> backward ->
clip -> step -> EMA -> log / validate / checkpoint at intervals. Iterations, not epochs. `.item()` only at log steps.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from evaluate.metrics import ssim
from model import create_model, model_state, unwrap, warm_start
from model.condition import condition_from_params
from pipeline.degrade import sample_and_degrade
from pipeline.loader import make_loader
from pipeline.valset import ValSet, build_valset
from train import checkpoint
from train.config import LossConfig, OptimConfig, TrainConfig, to_dict
from train.logger import RunLogger
from train.validate import validate


def pick_device(name: str) -> torch.device:
    """auto -> CUDA, then MPS, then CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but CUDA is not available; use run.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("run.device=mps but MPS is not available; use run.device=auto or cpu")
    return torch.device(name)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup to `lr`, then cosine down to `lr * min_lr_ratio` at `total_steps` (pure, [nG] get_lr)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def loss_fn(restored: torch.Tensor, clean: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    restored, clean = restored.float(), clean.float()
    if cfg.kind == "l1":
        loss = F.l1_loss(restored, clean)
    elif cfg.kind == "charbonnier":
        loss = torch.sqrt((restored - clean) ** 2 + 1e-6).mean()
    elif cfg.kind == "psnr":  # -PSNR, as NAFNet trains: 10 log10(MSE) per image, averaged
        loss = 10 * torch.log10(((restored - clean) ** 2).flatten(1).mean(1) + 1e-8).mean()
    else:
        raise ValueError(f"unknown loss.kind '{cfg.kind}': l1, charbonnier or psnr")
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * (1 - ssim(restored.clamp(0, 1), clean).mean())
    return loss


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp16 only when asked (MPS/CUDA); never on the CPU path by default."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in choices:
        raise ValueError(f"run.amp must be auto, off, bf16 or fp16, got '{amp}'")
    return choices[amp]


@dataclass
class State:
    """Everything the loop mutates, so helpers can be plain functions."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    step: int = 0
    best_psnr: float = -math.inf
    stop_signal: list[int] = field(default_factory=list)


def build_state(cfg: TrainConfig, device: torch.device) -> State:
    torch.manual_seed(cfg.run.seed)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    if cfg.model.init:
        warm_start(model, cfg.model.init)
    model = model.to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
    )  # fmt: skip
    ema = None
    if cfg.optim.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
    if cfg.run.compile:
        model = torch.compile(model)  # checkpoints unwrap `_orig_mod.` (model.model_state)
    dtype = amp_dtype(cfg.run.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    generator = torch.Generator(device).manual_seed(cfg.run.seed)
    return State(model, optimizer, ema, scaler, generator)


def save(state: State, cfg: TrainConfig, path: Path) -> None:
    """Checkpoint `state` atomically; refuses (raises) when any weight is NaN/inf, so a good file is never replaced."""
    finite = torch.stack([p.detach().isfinite().all() for p in state.model.parameters()]).all()
    if not bool(finite):
        raise FloatingPointError(f"weights are not finite at step {state.step}: not overwriting {path.name}")
    checkpoint.atomic_save(
        {
            "model": model_state(state.model),
            "model_name": cfg.model.name,
            "model_kwargs": dict(cfg.model.kwargs),
            "ema": model_state(state.ema.module) if state.ema is not None else None,
            "ema_n_averaged": int(state.ema.n_averaged) if state.ema is not None else 0,
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "step": state.step,
            "best_psnr": state.best_psnr,
            "config": to_dict(cfg),
            "device_type": state.generator.device.type,
            "rng": checkpoint.rng_state(state.generator),
        },
        path,
    )


def restore(state: State, path: Path) -> dict:
    """Load weights, optimizer and counters from `path`; returns the saved RNG states (set them after the replay)."""
    saved = checkpoint.load(path)
    if saved["device_type"] != state.generator.device.type:
        raise ValueError(
            f"{path} was written on {saved['device_type']}; resume it on a {saved['device_type']} device "
            f"(RNG states do not carry over), or start a new run from its weights"
        )
    unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.module.load_state_dict(saved["ema"])
        state.ema.n_averaged.fill_(saved["ema_n_averaged"])
    if state.scaler is not None and saved["scaler"] is not None:
        state.scaler.load_state_dict(saved["scaler"])
    state.step, state.best_psnr = saved["step"], saved["best_psnr"]
    return saved["rng"]


def train_step(
    state: State, clean: torch.Tensor, cfg: TrainConfig, lr: float, dtype: torch.dtype | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step; returns (loss, loss of the degraded input) and the degradation parameters, as
    device tensors (no sync)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    if cfg.run.channels_last:
        clean = clean.contiguous(memory_format=torch.channels_last)
    degraded, params = sample_and_degrade(clean, cfg.degrade, state.generator, state.step / cfg.run.steps)
    inputs = [degraded]
    if getattr(unwrap(state.model), "film", None) is not None:
        inputs.append(condition_from_params(params, state.generator, cfg.model.p_withheld))
    with torch.autocast(clean.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        restored = state.model(*inputs)
    loss = loss_fn(restored, clean, cfg.loss)
    with torch.no_grad():  # the same loss for doing nothing: the bar the model must clear (sanity check)
        input_loss = loss_fn(degraded.detach(), clean, cfg.loss)
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
    else:
        loss.backward()
    if cfg.optim.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.clip_grad_norm)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return torch.stack([loss.detach(), input_loss]), params


def fit(
    cfg: TrainConfig, shards: Path, run_dir: Path, resume: Path | None = None, stop_after: int | None = None
) -> dict:
    """Train for `cfg.run.steps` steps (or until `stop_after`, a signal, or NaN); returns the last validation."""
    device = pick_device(cfg.run.device)
    if device.type == "cpu":
        # decode workers are light (a few % of a core each at CPU training speeds): keep most cores for compute
        torch.set_num_threads(cfg.run.threads or max(1, (os.cpu_count() or 1) - cfg.loader.workers // 2))
    state = build_state(cfg, device)
    rng = restore(state, resume) if resume is not None else None
    valset = build_valset(shards, cfg.degrade, cfg.run.seed, cfg.val.crop, cfg.val.variants)
    loader = make_loader(shards, "train", cfg.loader, device)
    logger = RunLogger(cfg, run_dir, start_step=state.step, device=device)
    if state.step >= min(cfg.run.steps, stop_after or cfg.run.steps):
        logger.message(f"nothing to do: the run is already at step {state.step} of {cfg.run.steps}")
        logger.close()
        return {}
    if rng is not None:
        logger.message(f"resuming: replaying {state.step} batches so the data stream continues exactly")
        for _ in range(state.step):
            next(loader)
        checkpoint.set_rng_state(rng, state.generator)
    dtype = amp_dtype(cfg.run.amp, device)
    handlers = _catch_signals(state)
    try:
        return _loop(state, cfg, loader, valset, logger, run_dir, dtype, stop_after)
    except Exception:
        if state.stop_signal:  # a signal broke the step (e.g. it also killed the loader workers): keep the work
            save(state, cfg, run_dir / "last.pt")
        raise
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        logger.close()


def _loop(
    state: State,
    cfg: TrainConfig,
    loader: Iterator[torch.Tensor],
    valset: ValSet,
    logger: RunLogger,
    run_dir: Path,
    dtype: torch.dtype | None,
    stop_after: int | None,
) -> dict:
    last_val: dict = {}
    end = min(cfg.run.steps, stop_after or cfg.run.steps)
    while state.step < end:
        wait_start = time.perf_counter()
        clean = next(loader)
        waited = time.perf_counter() - wait_start
        loss, params = train_step(state, clean, cfg, lr_at(state.step, cfg.optim, cfg.run.steps), dtype)
        state.step += 1
        logger.record(state.step, loss, params, clean.shape[0], waited)
        logging_step = state.step % cfg.run.log_every == 0 or state.step == end
        if logging_step and not logger.flush(state.step, lr_at(state.step - 1, cfg.optim, cfg.run.steps)):
            raise FloatingPointError(f"loss is not finite at step {state.step}: stopping (last good: last.pt)")
        if state.step % cfg.run.val_every == 0 or state.step == cfg.run.steps:
            last_val = _validate_and_keep_best(state, cfg, valset, logger, run_dir)
        if state.step % cfg.run.ckpt_every == 0 or state.step == end:
            if not bool(torch.isfinite(loss).all()):
                raise FloatingPointError(f"loss is not finite at step {state.step}: stopping (last good: last.pt)")
            save(state, cfg, run_dir / "last.pt")
        if state.stop_signal:
            save(state, cfg, run_dir / "last.pt")
            logger.message(f"stopped by signal {state.stop_signal[0]} at step {state.step}; resume with --resume auto")
            break
    return last_val


def _validate_and_keep_best(state: State, cfg: TrainConfig, valset: ValSet, logger: RunLogger, run_dir: Path) -> dict:
    model = state.ema.module if state.ema is not None else state.model
    result = validate(model, valset, cfg.val, next(model.parameters()).device, run_dir / "samples", state.step)
    if result["psnr_model"] > state.best_psnr:
        state.best_psnr = result["psnr_model"]
        save(state, cfg, run_dir / "best.pt")
    logger.validation(state.step, result)
    return result


def _catch_signals(state: State) -> dict:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop after the current step; a second one quits."""
    previous = {}

    def handler(signum, _frame):
        state.stop_signal.append(signum)
        if len(state.stop_signal) > 1:
            signal.signal(signum, previous[signum])
            raise KeyboardInterrupt(f"second signal {signum}: quitting without waiting for the step")

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous
