"""The one model API: `MODELS`, `create_model`, `load_model`, `model_state`, `count_params`, `macs_per_megapixel`.

Every model maps `(N, 3, H, W)` float RGB in [0, 1] (any H, W) to a restored image of the same shape and dtype,
and declares:
- `stride`: the multiple it pads to internally;
- `conditioned`: True when it also takes `(degraded, condition)`, the `(N, 4)` rows of
  `model.condition.encode_condition` (callers ask `is_conditioned`, never a layer's name);
- `float32_modules()`: the submodules that stay float32 when the rest runs in fp16.

A trainer checkpoint is one dict `{"model": state_dict, "model_name": str, "model_kwargs": dict, "ema": state_dict |
None, ...}`; `load_model(path)` rebuilds the model from it alone. Nothing here downloads anything.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode

from model.blocks import NAFBlock
from model.files import CheckpointError, read_checkpoint, with_checksum
from model.nafnet import NAFNet
from model.resnet import ResNet

MODELS: dict[str, type[nn.Module]] = {"nafnet": NAFNet, "resnet": ResNet}

# The model the repository ships: what `infer`, `demo` and the exports use when no model is named.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "weights" / "nafnet16-strength-cbsd432.pt"

FLOAT32_CHILDREN = ("film",)  # NAFNet.float32_modules(), by name, for TorchScript modules
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel / AveragedModel, torch.compile


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name with its keyword arguments (e.g. `create_model("nafnet", width=32)`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    try:
        inspect.signature(MODELS[name]).bind(**kwargs)  # a wrong keyword is a config mistake, not a bug
    except TypeError as err:
        raise ValueError(f"model {name!r} does not take these arguments {kwargs}: {err}") from None
    return MODELS[name](**kwargs)


def is_conditioned(model: nn.Module) -> bool:
    """Whether `model` (wrapped or not) takes a condition: what it declares in `conditioned` (the model API)."""
    inner = unwrap(model)
    declared = getattr(inner, "conditioned", None)
    if not isinstance(declared, bool):
        raise TypeError(f"{type(inner).__name__} does not declare `conditioned` (a bool): see model/__init__.py")
    return declared


def float32_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules of `model` to keep in float32 under fp16 (NAFNet's condition MLP), as it declares them.

    A TorchScript module keeps no Python methods: there the children NAFNet names in `FLOAT32_CHILDREN` are used."""
    inner = unwrap(model)
    if isinstance(inner, torch.jit.ScriptModule):
        return [child for name, child in inner.named_children() if name in FLOAT32_CHILDREN]
    return list(inner.float32_modules())


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), counting shared ones once."""
    return sum(p.numel() for p in model.parameters())


def macs_per_megapixel(model: nn.Module) -> float:
    """Multiply-accumulates per megapixel of input, measured on one 256x256 image (MACs = FLOPs / 2).

    Counts what `torch.utils.flop_counter` counts (convolutions and matrix products), not elementwise ops.
    """
    param = next(model.parameters())
    probe = torch.zeros(1, 3, 256, 256, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(probe)
    model.train(was_training)
    return counter.get_total_flops() / 2 * 1e6 / (256 * 256)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / AveragedModel (EMA) / torch.compile wrappers, nested or not."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel | AveragedModel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A clean state dict for checkpoints: wrappers unwrapped, no `module.` / `_orig_mod.` prefixes.

    The tensors share storage with the model, as `state_dict()`'s do; clone them to keep a snapshot.
    """
    return strip_prefixes(unwrap(model).state_dict())


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove leading `module.` / `_orig_mod.` (in any order and number) from every key; drop EMA's `n_averaged`."""
    clean = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        if key != "n_averaged":
            clean[key] = value
    return clean


def load_model(
    path: str | os.PathLike | BinaryIO,
    *,
    name: str | None = None,
    kwargs: dict[str, Any] | None = None,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model for inference (returned in eval mode) from a checkpoint file; never unpickles arbitrary objects.

    Accepts (a) this project's checkpoint dict, rebuilt from its `model_name` / `model_kwargs` (`name` / `kwargs`
    override them when given) with its `ema` weights preferred when present and `use_ema`; (b) BasicSR-style
    `{"params": ..., "params_ema": ...}` (`params_ema` preferred when `use_ema`); (c) a bare state dict. For (b) and
    (c) the caller passes `name` and `kwargs`. Wrapper prefixes are stripped; loading is strict.
    """
    checkpoint = read_checkpoint(path, map_location)  # refuses code, damage and a checksum that differs
    state, saved_name, saved_kwargs = select_state(checkpoint, use_ema)
    name = name if name is not None else saved_name
    kwargs = kwargs if kwargs is not None else saved_kwargs
    if name is None:
        raise ValueError(
            f"{path} is a BasicSR-style or bare state dict without a model name: "
            f"pass name= (one of {', '.join(sorted(MODELS))}) and kwargs= to load_model"
        )
    model = create_model(name, **(kwargs or {}))
    load_strict(model, strip_prefixes(state), f"{path} as {name}({kwargs or {}})")
    return model.eval()


def select_state(checkpoint: Any, use_ema: bool) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """Pick the weights from a loaded checkpoint: `(state_dict, model_name or None, model_kwargs or None)`."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a checkpoint dict or a state dict, got {type(checkpoint).__name__}")
    if "model" in checkpoint:
        if "model_name" not in checkpoint:
            raise ValueError("checkpoint has 'model' weights but no 'model_name' to rebuild the model from")
        ema = checkpoint.get("ema")
        state = ema if use_ema and ema is not None else checkpoint["model"]
        return state, checkpoint["model_name"], checkpoint.get("model_kwargs") or {}
    if "params" in checkpoint or "params_ema" in checkpoint:
        key = "params_ema" if use_ema and checkpoint.get("params_ema") is not None else "params"
        if checkpoint.get(key) is None:
            raise ValueError(f"BasicSR-style checkpoint has no usable '{key}' weights")
        return checkpoint[key], None, None
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint, None, None
    raise ValueError(
        "unrecognised checkpoint: expected {'model', 'model_name', ...}, {'params'/'params_ema'} or a bare "
        f"state dict; top-level keys: {sorted(map(str, checkpoint))[:8]}"
    )


def load_strict(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """`load_state_dict` with every key required and none extra, naming a few offenders on failure."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"weights in {what} do not fit the model: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {what} do not match the model: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )


def warm_start(model: nn.Module, path: str | os.PathLike, new_prefixes: tuple[str, ...] = ("film.",)) -> list[str]:
    """Start `model` from the weights in `path` (EMA preferred), e.g. a conditioned model from a blind one, or a
    deeper one from a shallower one: keys under `new_prefixes`, and whole NAFBlocks the file lacks, may be missing
    (they keep their initialisation, the identity, so the loaded model's function is unchanged); any other mismatch
    fails. Returns the keys that kept their initialisation."""
    state, _, _ = select_state(read_checkpoint(path), use_ema=True)
    state = strip_prefixes(state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"weights in {path} do not fit the model: {err}") from err
    allowed = new_prefixes + _new_blocks(model, state)
    wrong = [k for k in result.missing_keys if not k.startswith(allowed)] + list(result.unexpected_keys)
    if wrong:
        raise ValueError(f"weights in {path} do not match the model: e.g. {wrong[:3]}")
    return list(result.missing_keys)


def _new_blocks(model: nn.Module, state: dict[str, Any]) -> tuple[str, ...]:
    """Prefixes of the model's NAFBlocks none of whose weights are in `state` (a fresh NAFBlock is the identity)."""
    return tuple(
        f"{name}."
        for name, module in model.named_modules()
        if isinstance(module, NAFBlock) and not any(key.startswith(f"{name}.") for key in state)
    )


__all__ = [
    "MODELS",
    "CheckpointError",
    "NAFNet",
    "SHIPPED_MODEL",
    "ResNet",
    "count_params",
    "create_model",
    "load_model",
    "macs_per_megapixel",
    "model_state",
    "read_checkpoint",
    "unwrap",
    "warm_start",
    "with_checksum",
]
