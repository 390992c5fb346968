"""One optimisation step and what it needs: the training state, the learning rate and loss rules, the CPU thread rule.

lr = lr_at(step) -> degrade the clean batch on the device (parameters from seeds of (seed, rank, step)) -> autocast
forward -> loss -> backward -> clip -> optimizer step -> EMA. The loop around it (`train.loop.fit`) feeds batches,
logs, validates and checkpoints.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from evaluate.metrics import ssim
from model import create_model, is_conditioned, unwrap, warm_start
from model.condition import condition_from_params
from pipeline.degrade import sample_and_degrade
from train import distributed
from train.config import LossConfig, OptimConfig, TrainConfig
from train.distributed import DistEnv
from train.ema import Ema
from train.precision import amp_dtype
from train.state import State

LR_SCALING = {"none": lambda _n: 1.0, "sqrt": math.sqrt, "linear": float}  # peak lr factor for N ranks


def cpu_threads(cfg: TrainConfig, processes_per_node: int = 1) -> int:
    """Torch CPU threads per training process: `run.threads`, or this process's share of the cores less half a core
    per loader worker (decode workers are light: a few % of a core each at CPU training speeds)."""
    cores = max(1, (os.cpu_count() or 1) // processes_per_node)
    return cfg.run.threads or max(1, cores - cfg.loader.workers // 2)


def lr_at(step: int, cfg: OptimConfig, total_steps: int, world_size: int = 1) -> float:
    """The learning rate of `step` (pure): linear warmup to the peak, then either cosine down to
    `peak * min_lr_ratio` at `total_steps`, or (`wsd`, warmup-stable-decay) the peak until `decay_start` and a
    linear decay to the floor at `total_steps`: a run that may be continued at any step, and cooled from any step.

    The peak is `lr` scaled for `world_size` ranks by `cfg.lr_scaling` (x1, x sqrt(N) or x N; docs/scaling.md).
    """
    peak = cfg.lr * LR_SCALING[cfg.lr_scaling](world_size)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        start = max(cfg.decay_start, cfg.warmup_steps)
        if step < start or total_steps <= start:
            return peak
        return peak + (floor - peak) * min(1.0, (step - start) / (total_steps - start))
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
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
