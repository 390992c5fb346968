"""The same degradation with the real libjpeg encoder (Pillow) on the CPU, one image at a time.

Validation, evaluation, the fidelity benchmark and the preview use it, so reported numbers are real-world numbers.
Parameters mean what they mean in `pipeline.degrade` (one sample's values as Python numbers).
"""

from __future__ import annotations

import numpy as np

from pipeline.io import pil_jpeg

SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def jpeg_shifted(rgb8: np.ndarray, quality: int, subsampling: str, shift_y: int, shift_x: int) -> np.ndarray:
    """Real JPEG of `rgb8` (H, W, 3) uint8 placed at (shift_y, shift_x) in an edge-replicated canvas 8 px larger."""
    h, w = rgb8.shape[:2]
    canvas = np.pad(rgb8, ((shift_y, 8 - shift_y), (shift_x, 8 - shift_x), (0, 0)), mode="edge")
    return pil_jpeg(canvas, quality, subsampling)[shift_y : shift_y + h, shift_x : shift_x + w]


def degrade_reference(clean8: np.ndarray, params: dict[str, float | int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 clean -> uint8 degraded: float Gaussian noise, clip, round, libjpeg once or twice."""
    sigma, quality = float(params["sigma_255"]), int(params["quality"])
    if sigma == 0 and quality == 0:
        return clean8.copy()
    noisy = clean8.astype(np.float64) + rng.standard_normal(clean8.shape) * sigma
    out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if quality > 0:
        subsampling = SUBSAMPLING_NAMES[int(params["subsampling"])]
        out = pil_jpeg(out, quality, subsampling)
        if int(params["quality2"]) > 0:
            out = jpeg_shifted(
                out, int(params["quality2"]), subsampling, int(params["shift_y"]), int(params["shift_x"])
            )
    return out
