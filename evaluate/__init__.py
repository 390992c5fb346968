"""Evaluation harness: metrics on [0, 1] tensors, test protocols, the `evaluate` loop and its reports.

Python API: `evaluate(model_or_none, images, sigmas, qualities, protocol, device, ...) -> dict` runs without writing
files; `write_outputs(result, out_dir)` writes results.json / results.md / per_image.csv / crops / plots / failure.md.
CLI: `python -m evaluate --model PATH|identity --data DIR --out DIR`.
"""

from evaluate.harness import DEFAULT_QUALITIES, DEFAULT_SIGMAS, evaluate, resolve_device
from evaluate.metrics import metric_label, psnr, psnr_from_mse, rgb_to_y, ssim
from evaluate.protocols import Cell, degrade, make_cells
from evaluate.report import write_outputs

__all__ = [
    "DEFAULT_QUALITIES",
    "DEFAULT_SIGMAS",
    "Cell",
    "degrade",
    "evaluate",
    "make_cells",
    "metric_label",
    "psnr",
    "psnr_from_mse",
    "resolve_device",
    "rgb_to_y",
    "ssim",
    "write_outputs",
]
