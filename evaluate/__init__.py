"""Evaluation harness: metrics on [0, 1] tensors, test protocols, the `evaluate` loop and its reports.

Python API: `evaluate.harness.evaluate(model_or_none, images, sigmas, qualities, protocol, device, ...) -> dict` runs
without writing files; `evaluate.report.write_outputs(result, out_dir)` writes results.json / results.md /
per_image.csv / crops / plots / failure.md. CLI: `python -m evaluate --model PATH|identity --data DIR --out DIR`.
Only the metrics are imported here: the trainer needs them, and the reports pull in matplotlib (slow to import in
every training process).
"""

from evaluate.metrics import metric_label, psnr, psnr_from_mse, rgb_to_y, ssim

__all__ = ["metric_label", "psnr", "psnr_from_mse", "rgb_to_y", "ssim"]
