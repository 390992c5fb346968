"""File <-> array/tensor conversion: the only module where uint8 HWC images exist.

Normalisation rule applied to every input image (packing, inference, demo), in this order:
1. The file is opened and fully decoded; zero-byte, corrupt and truncated files raise `ImageError`.
   Images above `max_pixels` are refused before decoding (decompression-bomb guard). A file whose first bytes name a
   format this Pillow build cannot decode (WebP, AVIF, compressed TIFF without their codecs; HEIC without the
   optional pillow-heif) raises `ImageError("codec_missing")` saying so: the file is fine, the build is not.
   Animated files (GIF, WebP, APNG) give their first frame (`input_notes` says so).
2. EXIF orientation is applied (the pixels are rotated/flipped, the tag dropped).
3. The mode becomes 8-bit RGB:
   - 16-bit and 32-bit integer grayscale (I;16*, I): rounded to 8 bits, v8 = round(v16 / 257);
   - float grayscale (F): taken as [0, 1] if its maximum is <= 1, else as [0, 255]; clipped, rounded;
   - 1-bit and grayscale (1, L): replicated to the three channels;
   - alpha (RGBA, LA, PA, palette with transparency): composited over white;
   - palette, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB (CMYK is converted naively, no ICC);
   - 16 bits per channel RGB (PNG, TIFF): Pillow's decoder keeps the high byte (v8 = v16 >> 8).
   Everything downstream is 8-bit: the model learns and restores 8-bit photos (JPEG is 8-bit), and outputs are
   8-bit PNG, also for a 16-bit input (`input_notes` says it was reduced).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline.codecs import codec_missing_for, heif_available, missing_message, sniff_format

if heif_available():  # the optional `heic` extra: Pillow then opens HEIC/HEIF files like any other
    import pillow_heif

    pillow_heif.register_heif_opener()

IMAGE_SUFFIXES = (  # compared lower-cased
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".avif",
    ".heic",
    ".heif",
    ".gif",
)
READABLE = "JPEG, PNG, TIFF, WebP, AVIF, HEIC, BMP or GIF"  # for messages
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger images are refused as possible decompression bombs

_REASONS = {  # ImageError.reason -> words for users
    "empty": "empty file (zero bytes)",
    "unreadable": f"not an image that can be read ({READABLE} expected)",
    "not_a_file": "not a file",
    "corrupt": "damaged image file",
    "truncated": "truncated image file",
    "too_large": "too large (refused before decoding)",
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """An input that cannot become an 8-bit RGB image; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def image_entries(folder: str | os.PathLike) -> list[Path]:
    """The entries directly in `folder` named like images (`IMAGE_SUFFIXES`), sorted by name; a folder named like an
    image is listed too, so the caller can say it is not a file."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file or bytes; raise `ImageError` with a reason on any failure."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty", "zero bytes")
        stream: io.BytesIO | Path = io.BytesIO(source)
        head = source[:32]
    else:
        stream = Path(source)
        if stream.is_dir():
            raise ImageError("not_a_file", f"{source} is a folder")
        if stream.stat().st_size == 0:
            raise ImageError("empty", f"{source} has zero bytes")
        with open(stream, "rb") as handle:
            head = handle.read(32)
    announced = sniff_format(head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            if img.width * img.height > max_pixels:
                raise ImageError("too_large", f"{img.width}x{img.height} exceeds {max_pixels} pixels")
            args = img.tile[0].args if img.tile else ""  # the decoder's raw mode, e.g. "RGB;16B" for 48-bit PNG
            rawmode = str(args[0] if isinstance(args, tuple) and args else args)
            img.load()
            img.info["source_rawmode"] = rawmode  # for `input_notes`: load() forgets it
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_large", str(err)) from err
    except Image.UnidentifiedImageError as err:
        if codec_missing_for(announced):
            raise ImageError("codec_missing", missing_message(announced)) from err
        if announced:  # the right signature, then nothing Pillow can parse: a damaged header
            raise ImageError("corrupt", f"starts like a {announced} file but its header does not decode") from err
        raise ImageError("unreadable", f"its first bytes match no image format; {READABLE} expected") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if "not available" in str(err) or codec_missing_for(announced):  # e.g. "decoder libtiff not available"
            raise ImageError("codec_missing", missing_message(announced or "TIFF")) from err
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise ImageError(reason, str(err)) from err
    return img


def input_notes(img: Image.Image) -> tuple[str, ...]:
    """What the normalisation rule drops from an image `open_image` returned, in words: later frames, bits beyond 8."""
    notes = []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated ({frames} frames): only the first frame is used")
    rawmode = img.info.get("source_rawmode", "")
    if img.mode.startswith("I;16") or img.mode == "I" or ";16" in rawmode:
        notes.append("16 bits per channel: reduced to 8 bits (the model and the PNG it writes are 8-bit)")
    return tuple(notes)


def explain_error(err: Exception) -> str:
    """A user-facing line for a failed read: `ImageError` reasons in words, other errors by their type."""
    if isinstance(err, ImageError) and err.reason == "codec_missing":
        return str(err).split(": ", 1)[1]  # the whole message: which support is missing, and the fix
    if isinstance(err, ImageError):
        detail = str(err).split(": ", 1)[1] if ": " in str(err) else ""
        return _REASONS.get(err.reason, err.reason) + (f" ({detail})" if detail else "")
    if isinstance(err, OSError):
        return f"cannot read the file: {err.strerror or err}"
    return f"cannot decode the file: {type(err).__name__}: {err}"


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
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    except Image.UnidentifiedImageError as err:  # its message names a BytesIO object, which tells the user nothing
        raise ImageError("corrupt", f"{len(data)} bytes that no longer decode as an image") from err


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
