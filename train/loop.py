"""`fit`: the training loop, read top to bottom.

clean batch from the loader -> one optimisation step (`train.step.train_step`: degrade, forward, loss, backward,
clip, step, EMA) -> log / validate / checkpoint at intervals. Iterations, not epochs. `.item()` only at log steps.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from model import unwrap
from pipeline.device import resolve_device
from pipeline.health import DataSkipLimit
from pipeline.jpeg import resolve_codec
from pipeline.loader import make_loader
from pipeline.shard_format import MANIFEST
from pipeline.sync import OpCounter
from pipeline.valset import ValSet, build_folder_valset, build_valset
from train import distributed
from train.checkpoint import restore, save, set_rng_state
from train.config import TrainConfig
from train.logger import RunLogger
from train.precision import amp_dtype, describe
from train.state import State
from train.step import build_state, cpu_threads, lr_at, train_step
from train.validate import ValSetsResult, validate_sets


class Stopped(Exception):
    """Training stopped by SIGINT/SIGTERM after a checkpoint (last.pt holds the step); `signum` says which."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; resume with --resume auto")
        self.signum, self.step = signum, step


def fit(
    cfg: TrainConfig, shards: Path, run_dir: Path, resume: Path | None = None, stop_after: int | None = None
) -> ValSetsResult:
    """Train for `cfg.run.steps` steps (or until `stop_after`, or NaN); returns the last validation. A signal
    checkpoints after the current step, then raises `Stopped` (so a command exits 130 or 143, not 0).

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
        if isinstance(err, Stopped):
            raise  # last.pt was written after the step
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
    """The shards' val split first (named after the shard folder), then each `val.sets` folder, in config order: a
    folder of photos, or a shard folder (holding a manifest) whose val split is used."""
    args = (cfg.degrade, cfg.val.seed, cfg.val.crop, cfg.val.variants)
    valsets = {f"{shards.name} val": build_valset(shards, *args)}
    for name, folder in cfg.val.sets.items():
        is_shards = (Path(folder) / MANIFEST).is_file()
        valsets[name] = build_valset(folder, *args) if is_shards else build_folder_valset(folder, *args)
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
            raise Stopped(signum if isinstance(signum, int) else signal.SIGTERM, state.step)
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
