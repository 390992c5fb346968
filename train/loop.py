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

import numpy as np
import torch
import torch.nn.functional as F

from evaluate.metrics import ssim
from model import create_model, is_conditioned, unwrap, warm_start
from model.condition import condition_from_params
from pipeline.degrade import sample_and_degrade
from pipeline.device import resolve_device
from pipeline.health import DataSkipLimit
from pipeline.jpeg import resolve_codec
from pipeline.loader import make_loader
from pipeline.sync import OpCounter
from pipeline.valset import ValSet, build_folder_valset, build_valset
from train import distributed
from train.checkpoint import restore, save, set_rng_state
from train.config import LossConfig, OptimConfig, TrainConfig
from train.distributed import DistEnv
from train.ema import Ema
from train.logger import RunLogger
from train.precision import amp_dtype, describe
from train.validate import ValSetsResult, validate_sets

LR_SCALING = {"none": lambda _n: 1.0, "sqrt": math.sqrt, "linear": float}  # peak lr factor for N ranks


def cpu_threads(cfg: TrainConfig, processes_per_node: int = 1) -> int:
    """Torch CPU threads per training process: `run.threads`, or this process's share of the cores less half a core
    per loader worker (decode workers are light: a few % of a core each at CPU training speeds)."""
    cores = max(1, (os.cpu_count() or 1) // processes_per_node)
    return cfg.run.threads or max(1, cores - cfg.loader.workers // 2)


def lr_at(step: int, cfg: OptimConfig, total_steps: int, world_size: int = 1) -> float:
    """Linear warmup to the peak, then cosine down to `peak * min_lr_ratio` at `total_steps` (pure, [nG] get_lr).

    The peak is `lr` scaled for `world_size` ranks by `cfg.lr_scaling` (x1, x sqrt(N) or x N; docs/scaling.md).
    """
    peak = cfg.lr * LR_SCALING[cfg.lr_scaling](world_size)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = peak * cfg.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


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


@dataclass
class State:
    """Everything the loop mutates, so helpers can be plain functions; `env` is this process's place among ranks."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: Ema | None
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator  # on the device: noise, withheld conditions
    host_generator: torch.Generator  # on the CPU: the degradation parameters (group sizes known without a sync)
    env: DistEnv = field(default_factory=DistEnv)
    step: int = 0
    best_psnr: float = -math.inf
    stop_signal: list[int] = field(default_factory=list)


def build_state(cfg: TrainConfig, device: torch.device, env: DistEnv | None = None) -> State:
    """Model (DDP-wrapped with several ranks), optimizer, EMA, scaler and this rank's degradation generator."""
    env = env or DistEnv()
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    if cfg.model.init:
        warm_start(model, cfg.model.init)
    model = model.to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = Ema(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    model = distributed.wrap(model, device, env)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    fused = device.type in ("cuda", "cpu")  # one op for the whole update (MPS: foreach)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=betas,
        weight_decay=cfg.optim.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )
    if cfg.run.compile:
        model = torch.compile(model)  # checkpoints unwrap `_orig_mod.` and `module.` (model.model_state)
    dtype = amp_dtype(cfg.run.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    seed = distributed.rank_seed(cfg.run.seed, env.rank)
    if env.rank > 0:
        torch.manual_seed(seed)  # any global-RNG use differs per rank too; rank 0 keeps the single-process stream
    generator = torch.Generator(device).manual_seed(seed)  # reseeded each step (step_seed): per rank and step
    return State(model, optimizer, ema, scaler, generator, torch.Generator().manual_seed(seed), env)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one rank's step: degradations are a pure function of (seed, rank, step), so resuming at any step
    needs no RNG replay and ranks never share a stream."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def train_step(
    state: State, clean: torch.Tensor, cfg: TrainConfig, lr: float, dtype: torch.dtype | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step; returns (loss, loss of the degraded input) and the degradation parameters, as
    device tensors. Nothing here reads the device (tests/test_train_sync.py): a GPU runs ahead of the host."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    if cfg.run.channels_last:
        clean = clean.contiguous(memory_format=torch.channels_last)
    seed = step_seed(cfg.run.seed, state.env.rank, state.step)
    state.generator.manual_seed(seed)
    state.host_generator.manual_seed(seed)
    progress = state.step / cfg.run.steps
    degraded, params = sample_and_degrade(clean, cfg.degrade, state.generator, progress, state.host_generator)
    condition = None
    if is_conditioned(state.model):
        condition = condition_from_params(params, state.generator, cfg.model.p_withheld)
    losses = backward(state, clean, degraded, condition, cfg, dtype)
    if cfg.optim.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.clip_grad_norm, foreach=True)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    if state.ema is not None:
        state.ema.update(unwrap(state.model))
    return losses, params


def backward(
    state: State,
    clean: torch.Tensor,
    degraded: torch.Tensor,
    condition: torch.Tensor | None,
    cfg: TrainConfig,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Forward, loss and backward: leaves in each `.grad` the gradient of the mean loss over the batches of all
    ranks (DDP averages them). Returns [loss, loss of the degraded input], detached (no sync)."""
    inputs = [degraded] if condition is None else [degraded, condition]
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
    return torch.stack([loss.detach(), input_loss])


def fit(
    cfg: TrainConfig, shards: Path, run_dir: Path, resume: Path | None = None, stop_after: int | None = None
) -> ValSetsResult:
    """Train for `cfg.run.steps` steps (or until `stop_after`, a signal, or NaN); returns the last validation.

    Under torchrun (after `distributed.init`) every rank runs this: each reads its own shards and draws its own
    degradations; rank 0 alone logs, validates and writes checkpoints (the others return {}).
    """
    env = distributed.current()
    device = distributed.rank_device(resolve_device(cfg.run.device), env)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, env.local_world_size))
    state = build_state(cfg, device, env)
    rng = restore(state, resume) if resume is not None else None
    distributed.check_same_step(state.step, env)
    valset = build_valsets(shards, cfg) if env.is_main else None
    loader = make_loader(shards, "train", cfg.loader, device, env.rank, env.world_size, start_step=state.step)
    logger = RunLogger(cfg, run_dir, start_step=state.step, device=device, env=env)
    if state.step >= min(cfg.run.steps, stop_after or cfg.run.steps):
        logger.message(f"nothing to do: the run is already at step {state.step} of {cfg.run.steps}")
        logger.close()
        return ValSetsResult()
    if rng is not None:
        logger.message(
            f"resuming: the data stream starts at step {state.step} (the batch of a step depends on its number)"
        )
        set_rng_state(rng, state.generator)
    dtype = amp_dtype(cfg.run.amp, device)
    logger.message(describe(dtype, device, cfg.run.channels_last))
    logger.message(f"degradation JPEG codec: {resolve_codec(cfg.degrade.codec, device)} (bit-exact to libjpeg)")
    handlers = _catch_signals(state, repeat_quits=env.world_size == 1)
    try:
        return _loop(state, cfg, loader, valset, logger, run_dir, dtype, stop_after)
    except Exception as err:
        stop = state.stop_signal or isinstance(err, DataSkipLimit)  # a signal broke the step, or too much bad data
        if stop and env.world_size == 1:
            save(state, cfg, run_dir / "last.pt")
        raise
    finally:
        loader.close()  # stops the loader's workers: they would keep an interpreter that is exiting alive
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        logger.close()


def build_valsets(shards: Path, cfg: TrainConfig) -> dict[str, ValSet]:
    """The shards' val split first (named after the shard folder), then each `val.sets` folder, in config order."""
    args = (cfg.degrade, cfg.run.seed, cfg.val.crop, cfg.val.variants)
    valsets = {f"{shards.name} val": build_valset(shards, *args)}
    for name, folder in cfg.val.sets.items():
        valsets[name] = build_folder_valset(folder, *args)
    return valsets


def _loop(
    state: State,
    cfg: TrainConfig,
    loader: Iterator[torch.Tensor],
    valset: dict[str, ValSet] | None,
    logger: RunLogger,
    run_dir: Path,
    dtype: torch.dtype | None,
    stop_after: int | None,
) -> ValSetsResult:
    last_val = ValSetsResult()
    end = min(cfg.run.steps, stop_after or cfg.run.steps)
    world_size, first_step = state.env.world_size, state.step
    while state.step < end:
        wait_start = time.perf_counter()
        clean = next(loader)
        waited = time.perf_counter() - wait_start
        lr = lr_at(state.step, cfg.optim, cfg.run.steps, world_size)
        started = logger.clock.start()
        if state.step == first_step + 1:  # count one step's ops once, past the optimizer's lazy state setup
            with OpCounter() as counter:
                loss, params = train_step(state, clean, cfg, lr, dtype)
            logger.message(f"ops per training step: {counter.total} ({_top(counter)})")
        else:
            loss, params = train_step(state, clean, cfg, lr, dtype)
        logger.clock.stop(started)
        state.step += 1
        logger.record(state.step, loss, params, clean.shape[0], waited)
        logging_step = state.step % cfg.run.log_every == 0 or state.step == end
        if logging_step and (note := getattr(loader, "skip_note", lambda: None)()):
            logger.message(note)  # unreadable training samples skipped so far (pipeline.health)
        if logging_step and not logger.flush(state.step, lr_at(state.step - 1, cfg.optim, cfg.run.steps, world_size)):
            raise FloatingPointError(f"loss is not finite at step {state.step}: stopping (last good: last.pt)")
        if state.step % cfg.run.val_every == 0 or state.step == cfg.run.steps:
            last_val = _validate_and_keep_best(state, cfg, valset, logger, run_dir)
        if state.step % cfg.run.ckpt_every == 0 or state.step == end:
            if distributed.any_rank(not bool(torch.isfinite(loss).all()), state.env):
                raise FloatingPointError(f"loss is not finite at step {state.step}: stopping (last good: last.pt)")
            save(state, cfg, run_dir / "last.pt")
        if distributed.any_rank(bool(state.stop_signal), state.env):  # every rank stops after the same step
            save(state, cfg, run_dir / "last.pt")
            signum = state.stop_signal[0] if state.stop_signal else "(on another rank)"
            logger.message(f"stopped by signal {signum} at step {state.step}; resume with --resume auto")
            break
    return last_val


def _top(counter: OpCounter, count: int = 4) -> str:
    return ", ".join(f"{name} {n}" for name, n in counter.counts.most_common(count))


def _validate_and_keep_best(
    state: State, cfg: TrainConfig, valset: dict[str, ValSet] | None, logger: RunLogger, run_dir: Path
) -> ValSetsResult:
    """Rank 0 validates (the EMA weights when kept) while the others wait; all save best.pt together."""
    result, is_best = ValSetsResult(), False
    if state.env.is_main:
        model = state.ema.module if state.ema is not None else unwrap(state.model)
        result = validate_sets(model, valset, cfg.val, next(model.parameters()).device, run_dir / "samples", state.step)
        is_best = result["psnr_select"] > state.best_psnr
        state.best_psnr = max(state.best_psnr, result["psnr_select"])
        logger.validation(state.step, result)
    if distributed.from_main(is_best, state.env):
        save(state, cfg, run_dir / "best.pt")
    return result


def _catch_signals(state: State, repeat_quits: bool) -> dict:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop after the current step; a second one quits
    (single process). Under torchrun a repeat is ignored: the launcher forwards the group's signal, so a rank may
    get it twice, and torchrun itself kills ranks that have not finished within TORCH_ELASTIC_SHUTDOWN_TIMEOUT."""
    previous = {}

    def handler(signum, _frame):
        state.stop_signal.append(signum)
        if len(state.stop_signal) > 1 and repeat_quits:
            signal.signal(signum, previous[signum])
            raise KeyboardInterrupt(f"second signal {signum}: quitting without waiting for the step")

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous
