"""Writes an evaluation result (the dict `evaluate.harness.evaluate` returns) to an output folder.

Files: `results.json` (everything but the crops; non-finite numbers become null), `results.md` (table per cell),
`per_image.csv`, `crops/*.png` (degraded | restored | clean, labelled), the plots of `evaluate.plots` and the
failure report `failure.md` with `failure/*.png`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from evaluate.failure import write_failure_report
from evaluate.plots import write_plots
from evaluate.results import EvalResult, figure
from pipeline.io import save_png, to_rgb8_array

PANEL_LABELS = ("degraded", "restored", "clean")
LABEL_HEIGHT = 14


def jsonable(value):
    """Recursively replace non-finite floats by None (JSON has no inf/nan) and numpy scalars by Python ones."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_triplet(crop: torch.Tensor, path: Path) -> None:
    """Save a (3, s, 3 s + 8) degraded | restored | clean crop as PNG with a label strip above each panel."""
    pixels = to_rgb8_array(crop)
    width = pixels.shape[1]
    strip = Image.new("RGB", (width, LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    panel = (width - 8) // 3
    for i, label in enumerate(PANEL_LABELS):
        draw.text((i * (panel + 4) + 2, 1), label, fill=(0, 0, 0))
    save_png(np.concatenate([np.asarray(strip), pixels], axis=0), path)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _quality(quality: int | None) -> str:
    return "none" if quality is None else str(quality)


def results_markdown(result: EvalResult) -> str:
    """Markdown summary: settings, then one table row per sigma x quality cell (input, model, baselines, gain)."""
    extra = [m for m in result["methods"] if m not in ("input", "model")]
    lines = [
        f"# Evaluation: {result.get('model', 'model')}",
        "",
        f"- protocol: `{result['protocol']}`; metrics: `{result['metric']['psnr']}`, `{result['metric']['ssim']}`",
        f"- data: `{result.get('data', 'in memory')}`; device: `{result['device']}`; "
        f"parameters: {result['parameters']}; seconds: {result['seconds']:.1f}",
        "- PSNR in dB, mean over images; gain = model - input. Outputs clipped and rounded to 8 bits before measuring.",
        "",
    ]
    psnr_cols = ["PSNR input", "PSNR model", "PSNR gain", *(f"PSNR {m}" for m in extra)]
    ssim_cols = ["SSIM input", "SSIM model", "SSIM gain", *(f"SSIM {m}" for m in extra)]
    header = ["sigma", "quality", "images", *psnr_cols, *ssim_cols]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for cell in result["cells"]:
        values = [f"{cell['sigma']:g}", _quality(cell["quality"]), str(cell["images"])]
        for metric, digits in (("psnr", 2), ("ssim", 4)):
            keys = [f"{metric}_input", f"{metric}_model", f"{metric}_gain", *(f"{metric}_{m}" for m in extra)]
            values += [_fmt(figure(cell, k), digits) for k in keys]
        lines.append("| " + " | ".join(values) + " |")
    lines += [""] + [f"- note: {message}" for message in result["messages"]]
    if result["samples"]["comparisons"]:
        lines += ["", "## Crops (degraded | restored | clean)", ""]
        for record, _ in result["samples"]["comparisons"]:
            lines.append(
                f"- `{record['cell']}` {record['name']}: input {_fmt(record['psnr_input'], 2)} dB -> "
                f"model {_fmt(record['psnr_model'], 2)} dB: [{record['file']}]({record['file']})"
            )
    return "\n".join(lines) + "\n"


def write_per_image_csv(rows: list[dict], path: Path) -> None:
    """One CSV row per (cell, image) with every measured column."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("none" if k == "quality" and v is None else v) for k, v in row.items()})


def write_outputs(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """Write every output file of `result` under `out_dir`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "samples"}
    (out / "results.json").write_text(json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(results_markdown(result))
    write_per_image_csv(result["per_image"], out / "per_image.csv")
    written = [out / "results.json", out / "results.md", out / "per_image.csv"]
    samples = result["samples"]
    for record, crop in [*samples["comparisons"], *samples["worst_images"], *samples["worst_tiles"]]:
        save_triplet(crop, out / record["file"])
        written.append(out / record["file"])
    written += write_plots(result, out)
    written.append(write_failure_report(result, out))
    return written
