"""Restore images from Python: `Restorer` opens a model once; calling it restores a PIL image or a numpy array.

    restorer = Restorer()  # the shipped model on the fastest runtime here
    restored = restorer(Image.open("noisy.png"), sigma=25, quality=40)  # PIL in, PIL out

A PIL image of any mode comes back as 8-bit RGB (EXIF orientation applied); an `(H, W, 3)` uint8 array comes back as
one, and an `(H, W, 3)` float array in [0, 1] as float32. Large images are tiled as `python -m infer` tiles them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infer.backends import Backend, open_backend
from infer.tiling import restore
from model.condition import encode_condition
from pipeline.io import to_rgb8, to_rgb8_array, to_tensor


class Restorer:
    """A model file (None: the shipped model) opened on `device` through `runtime`, ready to restore images."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        runtime: str = "auto",
        precision: str = "fp32",
        ensemble: bool = False,
    ) -> None:
        """`ensemble`: average the 8 flips and quarter turns of each image (8x the time)."""
        self.backend: Backend = open_backend(model, device, precision, runtime)
        self.ensemble = ensemble

    def __call__(
        self, image: Image.Image | np.ndarray, sigma: float | None = None, quality: int | None = None
    ) -> Image.Image | np.ndarray:
        """Restore `image`. `sigma` (0-255 scale) and `quality` (1-100; 0 or 100: no JPEG) set the strength of a
        model with the strength control; each one left out is estimated by the model."""
        condition = None
        if sigma is not None or quality is not None:
            if not self.backend.conditioned:
                raise ValueError(f"{self.backend.name} is blind: it takes no sigma or quality")
            condition = encode_condition(1, sigma, quality)
        degraded = to_tensor(_rgb8(image))[None] if _is_uint8(image) else _float_tensor(image)  # (1, 3, H, W)
        restored = restore(self.backend, degraded, condition=condition, ensemble=self.ensemble)[0]  # (3, H, W)
        if isinstance(image, Image.Image):
            return Image.fromarray(to_rgb8_array(restored))
        if image.dtype == np.uint8:
            return to_rgb8_array(restored)
        return restored.permute(1, 2, 0).cpu().numpy().astype(np.float32)


def _is_uint8(image: Image.Image | np.ndarray) -> bool:
    return isinstance(image, Image.Image) or image.dtype == np.uint8


def _rgb8(image: Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a PIL image of any mode or a uint8 array of that shape."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb8(image))
    _check_shape(image)
    return np.ascontiguousarray(image)


def _float_tensor(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 from an (H, W, 3) float array in [0, 1]."""
    _check_shape(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float array, got {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].clamp(0, 1)


def _check_shape(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
