"""Fidelity of the device JPEG to real libjpeg (Pillow): mean PSNR of decoded pixels per quality.

`python -m bench.jpeg_fidelity --data DIR --out FILE.json [--limit N]` writes
`{"device_jpeg": {"5": dB, ...}, "kornia": {...}, "device_jpeg_444": ..., "device_jpeg_422": ...,
"device_double_jpeg": ..., "identical_fraction": {...}, ...}` and prints a markdown table.
PSNR is capped at 100 dB: 100.0 means every decoded pixel is identical (MSE 0).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import PIL
import torch

from evaluate.metrics import psnr
from pipeline.degrade import shifted_jpeg
from pipeline.io import IMAGE_SUFFIXES, load_rgb8, pil_jpeg, to_rgb8_array, to_tensor
from pipeline.jpeg import SUBSAMPLING, jpeg
from pipeline.reference import jpeg_shifted

QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
PSNR_CAP_DB = 100.0


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images through the project's one metric, capped (identical images -> the cap)."""
    return min(PSNR_CAP_DB, float(psnr(to_tensor(a)[None], to_tensor(b)[None])[0]))


def _device_jpeg(rgb8: np.ndarray, quality: int, subsampling: str, device: torch.device) -> np.ndarray:
    x = to_tensor(rgb8)[None].to(device)
    q = torch.tensor([quality], device=device)
    return to_rgb8_array(jpeg(x, q, torch.tensor([SUBSAMPLING[subsampling]], device=device))[0])


def _kornia_jpeg(rgb8: np.ndarray, quality: int, device: torch.device) -> np.ndarray:
    from kornia.enhance import jpeg_codec_differentiable

    x = to_tensor(rgb8)[None].to(device)
    return to_rgb8_array(jpeg_codec_differentiable(x, torch.tensor([float(quality)], device=device))[0])


def _double_device(rgb8: np.ndarray, quality: int, device: torch.device) -> np.ndarray:
    """Device: q=`quality` then a second save at 90 with the grid shifted by (3, 5); as degrade() does it."""
    x = jpeg(to_tensor(rgb8)[None].to(device), torch.tensor([quality], device=device))
    one = torch.ones(1, dtype=torch.long, device=device)
    out = shifted_jpeg(x, one * 90, [SUBSAMPLING["4:2:0"]], one * 3, one * 5)
    return to_rgb8_array(out[0])


def measure(images: list[np.ndarray], device: torch.device) -> dict:
    """Mean PSNR against Pillow per method and quality, and the fraction of bit-identical pixels."""
    result: dict[str, dict[str, float]] = {}
    identical: dict[str, float] = {}
    for q in QUALITIES:
        rows: dict[str, list[float]] = {}
        same = []
        for rgb8 in images:
            for sub, key in (("4:2:0", "device_jpeg"), ("4:4:4", "device_jpeg_444"), ("4:2:2", "device_jpeg_422")):
                ref = pil_jpeg(rgb8, q, sub)
                ours = _device_jpeg(rgb8, q, sub, device)
                rows.setdefault(key, []).append(psnr_uint8(ours, ref))
                same.append(float(np.mean(ours == ref)))
            ref = pil_jpeg(rgb8, q, "4:2:0")
            rows.setdefault("kornia", []).append(psnr_uint8(_kornia_jpeg(rgb8, q, device), ref))
            ref2 = jpeg_shifted(ref, 90, "4:2:0", 3, 5)
            rows.setdefault("device_double_jpeg", []).append(psnr_uint8(_double_device(rgb8, q, device), ref2))
        for key, values in rows.items():
            result.setdefault(key, {})[str(q)] = round(float(np.mean(values)), 2)
        identical[str(q)] = round(float(np.mean(same)), 6)
    result["identical_fraction"] = identical
    return result


def markdown(result: dict) -> str:
    keys = [k for k in result if k not in ("identical_fraction", "meta")]
    lines = ["| method | " + " | ".join(str(q) for q in QUALITIES) + " |", "|---" * (len(QUALITIES) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{result[key][str(q)]:.1f}" for q in QUALITIES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="folder of clean images")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--limit", type=int, default=0, help="use the first N images only (0 = all)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[: args.limit] if args.limit else files
    if not files:
        raise SystemExit(f"no images in {args.data}")
    result = measure([load_rgb8(p) for p in files], torch.device(args.device))
    result["meta"] = {
        "images": len(files),
        "data": str(args.data),
        "device": args.device,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "double_jpeg": "first save at q, second at 90 with the grid shifted by (3, 5), both 4:2:0",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"identical pixel fraction (device, all modes): {result['identical_fraction']}")


if __name__ == "__main__":
    main()
