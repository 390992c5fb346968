"""The demo's work, without Gradio: read an upload, restore it, degrade a clean image and measure the restoration.

Every image enters through `pipeline.io.load_rgb8`, so uploads follow the project's normalisation rule (EXIF
orientation, 16-bit, CMYK, alpha, gray...), and `describe_conversion` says in words what that rule changed.
Problems the user can fix raise `DemoError` with a message meant for them. Nothing here keeps state between calls:
results go to the folder the caller names, so two users never see each other's images.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluate.metrics import SSIM_WINDOW, psnr, ssim
from infer.tiling import Progress, restore
from model.condition import encode_condition
from pipeline.io import READABLE, ImageError, load_rgb8, save_png, to_rgb8_array, to_tensor
from pipeline.reference import degrade_reference

DEFAULT_MAX_PIXELS = 24_000_000  # larger uploads are refused before decoding; large ones below it run in tiles
SUBSAMPLING_420 = 2  # pipeline.reference code for 4:2:0, what Pillow and most cameras write
EXIF_ORIENTATION_TAG = 0x0112

_MODE_NOTES = {
    "1": "1-bit black and white: replicated to the three RGB channels",
    "L": "grayscale: replicated to the three RGB channels",
    "P": "palette colours: converted to RGB",
    "CMYK": "CMYK: converted to RGB naively (no ICC colour profile), colours may shift",
    "YCbCr": "YCbCr: converted to RGB",
    "LAB": "Lab: converted to RGB",
    "HSV": "HSV: converted to RGB",
    "F": "32-bit float grayscale: scaled to 8 bits and replicated to RGB",
    "I": "32-bit integer grayscale: reduced to 8 bits (value / 257) and replicated to RGB",
}
_ALPHA_NOTE = "transparency: composited over white"


class DemoError(ValueError):
    """A problem with the user's input, worded for the user."""


@dataclass(frozen=True)
class Upload:
    """One decoded upload: its display name, (H, W, 3) uint8 RGB pixels, and what normalisation changed."""

    name: str
    rgb8: np.ndarray
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Simulation:
    """Degraded and restored versions of a clean image, (H, W, 3) uint8 each, and their quality against it."""

    degraded8: np.ndarray
    restored8: np.ndarray
    metrics: dict[str, dict[str, float]]  # {"degraded": {"psnr_db", "ssim"}, "restored": {...}}


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def describe_conversion(path: str | os.PathLike) -> tuple[str, ...]:
    """What the normalisation rule does to this file, in words (empty for a plain 8-bit RGB image).

    Reads only the header; call it after `load_rgb8` has accepted the file."""
    with Image.open(path) as img:
        args = img.tile[0].args if img.tile else ""  # the decoder's raw mode, e.g. "RGB;16B" for 48-bit PNG
        rawmode = str(args[0] if isinstance(args, tuple) and args else args)  # read before getexif() loads a PNG
        mode, info, orientation = img.mode, img.info, img.getexif().get(EXIF_ORIENTATION_TAG, 1)
        frames = getattr(img, "n_frames", 1)
    notes = [f"animated ({frames} frames): only the first frame is used"] if frames > 1 else []
    if orientation not in (0, 1):
        notes.append(f"EXIF orientation {orientation}: pixels rotated/flipped upright")
    if mode.startswith("I;16"):
        notes.append("16-bit grayscale: reduced to 8 bits (value / 257) and replicated to RGB")
    elif mode == "RGB" and ";16" in rawmode:
        notes.append("16 bits per channel: reduced to 8 bits by the decoder (Pillow keeps the high byte)")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in info):
        notes.append(_ALPHA_NOTE)
    elif mode in _MODE_NOTES:
        notes.append(_MODE_NOTES[mode])
    elif mode != "RGB":
        notes.append(f"mode {mode}: converted to 8-bit RGB")
    return tuple(notes)


def read_upload(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Upload:
    """Decode an uploaded file by the project's normalisation rule; raise `DemoError` saying why it cannot be used."""
    name = Path(path).name
    try:
        rgb8 = load_rgb8(path, max_pixels=max_pixels)
    except ImageError as err:
        raise DemoError(_explain(name, err, max_pixels)) from err
    except OSError as err:  # the upload vanished or cannot be read at all
        raise DemoError(f"{name}: cannot read the file ({err.strerror or err})") from err
    return Upload(name=name, rgb8=rgb8, notes=describe_conversion(path))


def _explain(name: str, err: ImageError, max_pixels: int) -> str:
    if err.reason == "too_large":
        return (
            f"{name} is too large ({err}). This demo restores images up to {megapixels(max_pixels)} "
            f"({max_pixels:,} pixels; large ones are processed in tiles) and refuses larger ones."
        )
    if err.reason == "empty":
        return f"{name} is empty (zero bytes): nothing to restore."
    if err.reason == "codec_missing":  # the file is fine; this Pillow build lacks its decoder
        return f"{name}: {str(err).split(': ', 1)[1]}"
    if err.reason == "unreadable":
        return f"{name} is not an image this demo can read ({READABLE}), whatever its name says."
    return f"{name} is a damaged image file ({err.reason}): {err}"


def make_condition(conditioned: bool, sigma_255: float | None, quality: int | None) -> torch.Tensor | None:
    """The strength condition for one image, or None for blind restoration (and always for a blind model).

    `sigma_255` None withholds the noise level; `quality` None withholds the JPEG quality, 0 means no JPEG."""
    if not conditioned or (sigma_255 is None and quality is None):
        return None
    return encode_condition(1, sigma_255=sigma_255, quality=quality)


def restore_rgb8(
    backend, rgb8: np.ndarray, condition: torch.Tensor | None = None, progress: Progress | None = None
) -> np.ndarray:
    """Restore one (H, W, 3) uint8 image with `backend` (tiled by `infer.tiling` when it is too large, as
    `python -m infer` does); `progress(tiles done, tiles in all)` follows the tiles of a large image."""
    degraded = to_tensor(rgb8).unsqueeze(0)  # (1, 3, H, W)
    with torch.inference_mode():
        restored = restore(backend, degraded, condition=condition, progress=progress)
    return to_rgb8_array(restored[0])


def restore_to_folder(
    backend, upload: Upload, folder: Path, condition: torch.Tensor | None, progress: Progress | None = None
) -> dict[str, str]:
    """Restore `upload` and write `<stem>_input.png` (the normalised input) and `<stem>_restored.png` into `folder`.

    Returns {"name", "input", "restored", "seconds"} as strings, ready for the interface."""
    start = time.perf_counter()
    restored8 = restore_rgb8(backend, upload.rgb8, condition, progress)
    seconds = time.perf_counter() - start
    stem = _unique_stem(folder, Path(upload.name).stem or "image")
    input_path, restored_path = folder / f"{stem}_input.png", folder / f"{stem}_restored.png"
    save_png(upload.rgb8, input_path)
    save_png(restored8, restored_path)
    return {"name": upload.name, "input": str(input_path), "restored": str(restored_path), "seconds": f"{seconds:.2f}"}


def _unique_stem(folder: Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`... when two uploads share a name."""
    candidate, count = stem, 1
    while (folder / f"{candidate}_restored.png").exists():
        count += 1
        candidate = f"{stem}-{count}"
    return candidate


def simulate(
    backend, clean8: np.ndarray, sigma_255: float, quality: int, seed: int = 0, tell_model: bool = False
) -> Simulation:
    """Degrade (H, W, 3) uint8 `clean8` with Gaussian noise (`sigma_255`, 0-255 scale) then real libjpeg at
    `quality` (0 = no JPEG, 4:2:0), restore it, and measure PSNR/SSIM of both against the clean image.

    `tell_model` hands a conditioned model the true sigma and quality; otherwise it restores blind."""
    params = {"sigma_255": sigma_255, "quality": quality, "subsampling": SUBSAMPLING_420, "quality2": 0}
    params |= {"shift_y": 0, "shift_x": 0}
    degraded8 = degrade_reference(clean8, params, np.random.default_rng(seed))
    condition = make_condition(backend.conditioned and tell_model, sigma_255, quality)
    restored8 = restore_rgb8(backend, degraded8, condition)
    clean = to_tensor(clean8).unsqueeze(0)
    metrics = {
        "degraded": quality_against(to_tensor(degraded8).unsqueeze(0), clean),
        "restored": quality_against(to_tensor(restored8).unsqueeze(0), clean),
    }
    return Simulation(degraded8=degraded8, restored8=restored8, metrics=metrics)


def quality_against(image: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, RGB, +inf when identical) and SSIM (RGB; NaN below the 11x11 window) of one (1, 3, H, W) image."""
    small = min(clean.shape[-2:]) < SSIM_WINDOW
    return {
        "psnr_db": float(psnr(image, clean)[0]),
        "ssim": float("nan") if small else float(ssim(image, clean)[0]),
    }
