"""The failure report `failure.md`: where the model gains least, by cell, image, tile and content class."""

from __future__ import annotations

import math
from pathlib import Path

from evaluate.analysis import EDGE_COHERENCE, FLAT_GRADIENT_255, TILE_CLASSES
from evaluate.results import EvalResult

RULE = (
    f"Tiles are labelled on the clean image's BT.601 luma (0-255), central-difference gradients: `flat` if the RMS "
    f"gradient sqrt(mean(gx^2 + gy^2)) < {FLAT_GRADIENT_255:g}; else `edge` if the structure-tensor coherence "
    f"sqrt((Jxx-Jyy)^2 + 4 Jxy^2) / (Jxx+Jyy) >= {EDGE_COHERENCE:g} (one dominant orientation); else `texture`."
)


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _plain(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _quality(quality: int | None) -> str:
    return "none" if quality is None else str(quality)


def _least_gain_cells(result: EvalResult) -> list[str]:
    lines = ["## Cells with the least gain", "", "| sigma | quality | PSNR gain | SSIM gain |", "|" + " --- |" * 4]
    for cell in result["least_gain_cells"]:
        lines.append(
            f"| {cell['sigma']:g} | {_quality(cell['quality'])} | {_num(cell['psnr_gain'])} | "
            f"{_num(cell['ssim_gain'], 4)} |"
        )
    return lines + [""]


def _content_table(result: EvalResult) -> list[str]:
    """Mean tile PSNR gain per cell and content class (tile count in brackets)."""
    by_cell: dict[str, dict[str, dict]] = {}
    for entry in result["tile_classes"]:
        by_cell.setdefault(entry["cell"], {})[entry["content"]] = entry
    header = "| cell | " + " | ".join(TILE_CLASSES) + " |"
    lines = ["## Mean tile PSNR gain by content", "", RULE, "", header, "|" + " --- |" * (len(TILE_CLASSES) + 1)]
    for cell, entries in by_cell.items():
        values = [
            f"{_num(entries[c]['psnr_gain'])} ({entries[c]['tiles']})" if c in entries else "-" for c in TILE_CLASSES
        ]
        lines.append(f"| {cell} | " + " | ".join(values) + " |")
    return lines + [""]


def _worst_images(result: EvalResult) -> list[str]:
    lines = [
        "## Worst images by PSNR gain",
        "",
        "Crops (degraded | restored | clean) are centred on the image's worst tile.",
        "",
        "| rank | cell | image | PSNR input | PSNR model | gain | crop |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["worst_images"]:
        lines.append(
            f"| {r['rank']} | {r['cell']} | {r['name']} | {_plain(r['psnr_input'])} | {_plain(r['psnr_model'])} | "
            f"{_num(r['psnr_gain'])} | [png]({r['file']}) |"
        )
    return lines + [""]


def _worst_tiles(result: EvalResult) -> list[str]:
    lines = [
        "## Worst tiles by PSNR gain, per content class",
        "",
        "| rank | cell | image | top, left | size | content | PSNR input | PSNR model | gain | crop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["worst_tiles"]:
        lines.append(
            f"| {r['rank']} | {r['cell']} | {r['name']} | {r['top']}, {r['left']} | {r['size']} | {r['content']} | "
            f"{_plain(r['psnr_input'])} | {_plain(r['psnr_model'])} | {_num(r['psnr_gain'])} | [png]({r['file']}) |"
        )
    return lines + [""]


def failure_markdown(result: EvalResult) -> str:
    """The whole failure report as markdown."""
    lines = [
        f"# Failure report: {result.get('model', 'model')} ({result['protocol']} protocol)",
        "",
        "Gains are model PSNR minus input PSNR (dB); tile PSNR is on RGB whatever the table metric.",
        "",
    ]
    lines += _least_gain_cells(result) + _content_table(result) + _worst_images(result) + _worst_tiles(result)
    return "\n".join(lines)


def write_failure_report(result: EvalResult, out: Path) -> Path:
    """Write `failure.md` under `out` (its crops are written by `evaluate.report.write_outputs`)."""
    path = out / "failure.md"
    path.write_text(failure_markdown(result))
    return path
