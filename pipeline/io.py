"""File <-> array/tensor conversion: the only module where uint8 HWC images exist.

Normalisation rule applied to every input image (packing, inference, demo), in this order:
1. The file is opened and fully decoded; zero-byte, corrupt and truncated files raise `ImageError`.
   Images above `max_pixels` are refused before decoding (decompression-bomb guard).
2. EXIF orientation is applied (the pixels are rotated/flipped, the tag dropped).
3. The mode becomes 8-bit RGB:
   - 16-bit and 32-bit integer grayscale (I;16*, I): rounded to 8 bits, v8 = round(v16 / 257);
   - float grayscale (F): taken as [0, 1] if its maximum is <= 1, else as [0, 255]; clipped, rounded;
   - 1-bit and grayscale (1, L): replicated to the three channels;
   - alpha (RGBA, LA, PA, palette with transparency): composited over white;
   - palette, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB (CMYK is converted naively, no ICC).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp")  # compared lower-cased
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger images are refused as possible decompression bombs

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """An input that cannot become an 8-bit RGB image; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def open_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file or bytes; raise `ImageError` with a reason on any failure."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty", "zero bytes")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if stream.stat().st_size == 0:
            raise ImageError("empty", f"{source} has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            if img.width * img.height > max_pixels:
                raise ImageError("too_large", f"{img.width}x{img.height} exceeds {max_pixels} pixels")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_large", str(err)) from err
    except Image.UnidentifiedImageError as err:
        raise ImageError("unreadable", str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise ImageError(reason, str(err)) from err
    return img


def to_rgb8(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB by the rule in the module docstring."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img, dtype=np.float64)
        return _gray_to_rgb(np.clip(np.rint(wide / 257.0), 0, 255))
    if mode == "F":
        wide = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(wide, initial=0.0) <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.rint(np.nan_to_num(wide) * scale), 0, 255))
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2), "RGB")


def load_rgb8(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported image file or bytes -> (H, W, 3) uint8 RGB array, normalised by the module rule."""
    return np.asarray(to_rgb8(open_image(source, max_pixels)))


def decode_rgb8(data: bytes) -> np.ndarray:
    """Decode shard image bytes (already normalised at pack time) -> (H, W, 3) uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)


def pil_jpeg(rgb8: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """Real libjpeg (Pillow) encode + decode of a (H, W, 3) uint8 RGB array; returns the decoded array."""
    buffer = io.BytesIO()
    Image.fromarray(rgb8, "RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"))


def to_tensor(rgb8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) float32 tensor in [0, 1]."""
    writable = rgb8 if rgb8.flags.writeable else rgb8.copy()  # decoded arrays can be read-only views
    return torch.from_numpy(np.ascontiguousarray(writable)).permute(2, 0, 1).float().div_(255.0)


def to_rgb8_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float tensor in [0, 1] (any device) -> (H, W, 3) uint8 array, rounded to nearest."""
    return image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(rgb8: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (H, W, 3) uint8 RGB array as PNG, creating parent folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb8, "RGB").save(path, format="PNG")
