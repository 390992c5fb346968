"""Typed training configuration: defaults <- YAML file <- `--set a.b=v`; unknown keys and wrong types fail at start."""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DegradeConfig, LoaderConfig
from train.precision import default_channels_last


class ConfigError(ValueError):
    """A config mistake: the message names the key and what it accepts (the command prints it as one line)."""


class ConfigKeyError(ConfigError, KeyError):
    """An unknown key (also a KeyError, for callers that catch that)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type (also a TypeError, for callers that catch that)."""


@dataclass
class ModelConfig:
    name: str = "nafnet"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to model.create_model
    p_withheld: float = 0.5  # conditioned models: chance each condition (sigma, quality) is hidden in training
    init: str = ""  # start from these weights (a checkpoint; a conditioned model may start from a blind one)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW) of one process
    lr_scaling: str = "none"  # with N DDP ranks (batch x N per step) the peak is lr x: none 1 | sqrt sqrt(N) | linear N
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 200
    schedule: str = "cosine"  # after warmup: cosine to the floor at run.steps | wsd: constant, then linear decay
    decay_start: int = 0  # wsd: the step the linear decay to the floor starts (run.steps or more: never)
    min_lr_ratio: float = 0.01  # the floor, as a fraction of lr
    clip_grad_norm: float = 0.5  # 0 = off
    ema_decay: float = 0.999  # 0 = no EMA weights


@dataclass
class LossConfig:
    kind: str = "charbonnier"  # l1 | charbonnier | psnr
    ssim_weight: float = 0.0  # adds ssim_weight * (1 - SSIM)


@dataclass
class RunConfig:
    steps: int = 2000
    seed: int = 0
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
    amp: str = "auto"  # auto (bf16 on CUDA and on a CPU with native bf16, fp32 elsewhere) | off | bf16 | fp16
    channels_last: bool = False  # `default_config` sets it where it pays (train.precision.default_channels_last)
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU intra-op threads; 0 = cores - workers // 2 (2 threads: 27 img/s, 1: 15, on 2 cores)
    log_every: int = 20
    val_every: int = 250
    ckpt_every: int = 250
    sanity_steps: int = 500  # warn if loss has not fallen / val PSNR is below the input's by then


@dataclass
class ValConfig:
    crop: int = 192  # central crop of each val image, pixels
    variants: int = 2  # degradations per val image
    batch_size: int = 8
    samples: int = 6  # rows of the degraded | restored | clean grid
    seed: int = 0  # the validation degradations' seed, apart from run.seed: runs of other seeds stay comparable
    sets: dict[str, str] = field(default_factory=dict)  # name: folder of photos (or a shard folder's val split)
    # validated besides the val split,
    # each reported on its own; best.pt is chosen on the mean PSNR over all of them (docs: weights/README.md)


@dataclass
class LogConfig:
    wandb: str = "offline"  # offline | online | off
    project: str = "ml-restoration"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    val: ValConfig = field(default_factory=ValConfig)
    log: LogConfig = field(default_factory=LogConfig)


def default_config(device_type: str) -> TrainConfig:
    """A default that fits the machine: a small NAFNet on a CPU, a larger one and bigger batches on a GPU."""
    cfg = TrainConfig()
    cores = os.cpu_count() or 1
    if device_type == "cpu":
        cfg.model.kwargs = {"width": 16, "enc_blocks": [1, 1, 1, 1], "middle_blocks": 1, "dec_blocks": [1, 1, 1, 1]}
        cfg.loader = dataclasses.replace(cfg.loader, batch_size=8, patch_size=96, workers=1, crops_per_image=4)
    else:
        cfg.model.kwargs = {"width": 32, "enc_blocks": [1, 1, 2, 4], "middle_blocks": 4, "dec_blocks": [1, 1, 1, 1]}
        cfg.loader = dataclasses.replace(cfg.loader, batch_size=32, patch_size=128, workers=min(8, cores))
    cfg.run.channels_last = default_channels_last(device_type)
    return cfg


# Keys that lost their meaning: a checkpoint or YAML file from before still loads (the key is ignored, with a note);
# any other unknown key fails.
RETIRED = {"loader.shuffle_buffer": "the loaders draw a whole-split permutation per epoch (pipeline.stream)"}


def merge(cfg: Any, updates: dict[str, Any], where: str = "") -> Any:
    """Apply a nested dict of updates to a dataclass tree, checking every key and type; dict fields merge by key."""
    names = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    for key, value in updates.items():
        path = f"{where}{key}"
        if path in RETIRED:
            print(f"note: config key '{path}' is retired and ignored: {RETIRED[path]}", file=sys.stderr)
            continue
        if key not in names:
            raise ConfigKeyError(f"unknown config key '{path}' (known here: {', '.join(names)})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigTypeError(f"config '{path}' is a section; give it a mapping, not {value!r}")
            merge(current, value, path + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(cfg, key, _merge_dict(current, value))
        else:
            setattr(cfg, key, _coerce(value, hints[key], path))
    return cfg


def _merge_dict(current: dict, updates: dict) -> dict:
    merged = dict(current)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_dict(merged[key], value)
        else:
            merged[key] = _yaml(value, f"--set ...{key}") if isinstance(value, _Raw) else value
    return merged


class _Raw(str):
    """A `--set` value as typed: kept as text for str fields, read as a YAML scalar for the others."""


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint) or hint
    if isinstance(value, _Raw):
        value = str(value) if origin is str else _yaml(value, f"--set {path}")
    if origin is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as text
        except ValueError:
            pass
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is Any or isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
        return value
    raise ConfigTypeError(f"config '{path}' must be {getattr(origin, '__name__', origin)}, got {value!r}")


def check(cfg: TrainConfig) -> TrainConfig:
    """Values that would only fail later in the run fail now, with the key named."""
    for key in ("steps", "log_every", "val_every", "ckpt_every"):
        if getattr(cfg.run, key) < 1:
            raise ConfigError(f"run.{key} must be >= 1, got {getattr(cfg.run, key)}")
    if not 0 <= cfg.model.p_withheld <= 1:
        raise ConfigError(f"model.p_withheld must be in [0, 1], got {cfg.model.p_withheld}")
    choices = {
        "loss.kind": (cfg.loss.kind, ("l1", "charbonnier", "psnr")),
        "optim.lr_scaling": (cfg.optim.lr_scaling, ("none", "sqrt", "linear")),
        "optim.schedule": (cfg.optim.schedule, ("cosine", "wsd")),
        "run.amp": (cfg.run.amp, ("auto", "off", "bf16", "fp16")),
        "log.wandb": (cfg.log.wandb, ("offline", "online", "off")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    return cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> nested dict; values are read as YAML (1 -> int, [1,2] -> list) unless the key is text."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _Raw(raw)
    return nested


def load_config(
    device_type: str, path: str | Path | None = None, sets: list[str] | None = None, base: dict | None = None
) -> TrainConfig:
    """defaults for this device (or `base`, a resumed run's saved config) <- YAML file <- --set overrides."""
    cfg = from_dict(base) if base is not None else default_config(device_type)
    if path is not None:
        values = _yaml(Path(path).read_text(), f"--config {path}") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path} must hold a mapping of sections (model:, run:, ...), not {values!r}")
        merge(cfg, values)
    return check(merge(cfg, parse_set(sets or [])))


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return merge(TrainConfig(), values)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
