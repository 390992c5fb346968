"""The trainer: `python train/run.py --shards DIR` (see train/run.py).

The public entry points, for the benchmarks (bench/), the release tools (release/) and anyone driving training from
Python; nothing else outside train/ imports from it (tests/test_architecture.py):
- `fit(cfg, shards, run_dir)`, the training loop, and its parts `build_state` and `train_step`;
- `load_config`, `default_config`, `to_dict`, `config_from_dict`, `TrainConfig`: the typed configuration;
- `build_valsets`, `validate_sets`: the validation sets of a config and their PSNR (release/ledger.py);
- `amp_dtype`, `cpu_native_bf16`, `cpu_threads`: the precision and thread rules the trainer applies.
"""

from train.config import TrainConfig, default_config, load_config, to_dict
from train.config import from_dict as config_from_dict
from train.loop import build_valsets, fit
from train.precision import amp_dtype, cpu_native_bf16
from train.step import build_state, cpu_threads, train_step
from train.validate import validate_sets

__all__ = [
    "TrainConfig",
    "amp_dtype",
    "build_state",
    "build_valsets",
    "config_from_dict",
    "cpu_native_bf16",
    "cpu_threads",
    "default_config",
    "fit",
    "load_config",
    "to_dict",
    "train_step",
    "validate_sets",
]
