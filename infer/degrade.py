"""`python -m infer.degrade INPUT --sigma S --quality Q --out FILE`: a degraded test image from a clean photo.

The degradation is the project's reference one (`pipeline.reference.degrade_reference`): Gaussian noise of sigma S
(0-255 scale), clipped and rounded to 8 bits, then a real libjpeg (Pillow) JPEG at quality Q with 4:2:0 chroma
subsampling, as a camera or a website would save it.

What is written, and why:
  --out *.png   the decoded pixels of that JPEG, losslessly: exactly what the model is evaluated on.
  --out *.jpg   the JPEG file itself (the real compressed bytes). Decoding it with libjpeg-turbo (Pillow, most
                browsers and viewers) gives the same pixels as the PNG; other decoders may differ by a level or so.
                Allowed only when the JPEG is the last step (Q is set): saving a noise-only image as JPEG would
                add a compression that was not asked for, so that case is refused.
Noise uses numpy's default generator seeded with --seed, so the same command gives the same file.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.command import run_command
from pipeline.io import ImageError, load_rgb8, save_png
from pipeline.reference import SUBSAMPLING_NAMES, degrade_reference

SUBSAMPLING_420 = 2
JPEG_SUFFIXES = (".jpg", ".jpeg")


def degrade_file(source: Path, out: Path, sigma_255: float, quality: int, seed: int = 0) -> np.ndarray:
    """Degrade `source` and write `out` (PNG pixels, or the JPEG bytes for a .jpg name); returns the
    `(H, W, 3)` uint8 pixels that the written file decodes to."""
    suffix = out.suffix.lower()
    if suffix not in (".png", *JPEG_SUFFIXES):
        raise ValueError(f"--out must end in .png (lossless) or .jpg/.jpeg (the JPEG itself), got {out.name!r}")
    if suffix in JPEG_SUFFIXES and quality == 0:
        raise ValueError("a .jpg output needs --quality: without JPEG compression the result must be saved as .png")
    clean8 = load_rgb8(source)
    params = {"sigma_255": sigma_255, "quality": 0, "subsampling": SUBSAMPLING_420, "quality2": 0}
    noisy8 = degrade_reference(clean8, params, np.random.default_rng(seed))  # noise, clip, 8 bits; no JPEG yet
    out.parent.mkdir(parents=True, exist_ok=True)
    if quality == 0:
        save_png(noisy8, out)
        return noisy8
    buffer = io.BytesIO()  # the same encoder call as pipeline.io.pil_jpeg, keeping the bytes
    Image.fromarray(noisy8, "RGB").save(
        buffer, format="JPEG", quality=quality, subsampling=SUBSAMPLING_NAMES[SUBSAMPLING_420]
    )
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        degraded8 = np.asarray(img.convert("RGB"))
    if suffix in JPEG_SUFFIXES:
        out.write_bytes(buffer.getvalue())
    else:
        save_png(degraded8, out)
    return degraded8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infer.degrade", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="a clean image (any format pipeline.io reads)")
    parser.add_argument("--sigma", type=float, required=True, help="Gaussian noise sigma, 0-255 scale (0 = none)")
    parser.add_argument("--quality", type=int, required=True, help="JPEG quality 1-100 (0 = no JPEG)")
    parser.add_argument("--out", type=Path, required=True, help="output file: .png or .jpg (see above)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args(argv)
    if not 0 <= args.sigma <= 255 or not 0 <= args.quality <= 100:
        parser.error("--sigma must be in 0-255 and --quality in 0-100")
    try:
        degraded8 = degrade_file(args.input, args.out, args.sigma, args.quality, args.seed)
    except (ImageError, ValueError, OSError) as err:
        print(f"error: {args.input}: {err}", file=sys.stderr)
        return 1
    height, width = degraded8.shape[:2]
    print(f"wrote {args.out} ({width}x{height}, sigma {args.sigma:g}, quality {args.quality or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m infer.degrade"))
