"""Markdown of the release results (`release.evaluate`'s results.json): the full results block of docs/results.md,
the headline block of README.md, and `replace_block`, which writes a block between its markers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from evaluate.results import CellSummary
from release.results import Bm3dSummary, ReleaseSummary

BEGIN, END = "<!-- results:begin (python -m release.evaluate) -->", "<!-- results:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin (python -m release.evaluate) -->", "<!-- headline:end -->"
# The published anchor figures are data (release/published.json: the table, its source, the sigmas), not code.
_PUBLISHED = json.loads((Path(__file__).with_name("published.json")).read_text())
PUBLISHED = {name: {m: tuple(v) for m, v in rows.items()} for name, rows in _PUBLISHED["psnr_db"].items()}
PUBLISHED_PARAMS = _PUBLISHED["params"]
CLEAN_CELL_BAR_DB = 45.0


def _q(quality: int | None) -> str:
    return "none" if quality is None else str(quality)


def _db(value: float | None, sign: str = "") -> str:
    """A PSNR figure; None is an infinite PSNR (identical images: JSON has no inf) or an undefined gain."""
    return "∞" if value is None else f"{value:{sign}.2f}"


def _finite(value: float | None) -> float:
    return float("inf") if value is None else value


def _anchor_table(summary: ReleaseSummary) -> list[str]:
    """Ours blind (and told the true sigma, for a conditioned model) beside the published figures."""
    told = all("psnr_told" in c for cells in summary["anchor"].values() for c in cells)
    ours = [f"ours, blind ({summary['parameters'] / 1e6:.2f}M)"] + (["ours, told sigma"] if told else [])
    methods = list(PUBLISHED["CBSD68"])
    header = ["set", "sigma", "input", *ours, *(f"{m} ({PUBLISHED_PARAMS[m]})" for m in methods)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, cells in summary["anchor"].items():
        for i, cell in enumerate(cells):
            figures = [f"**{f:.2f}**" for f in [cell["psnr_model"]] + ([cell["psnr_told"]] if told else [])]
            published = [f"{PUBLISHED[name][m][i]:.2f}" for m in methods]
            row = [name, f"{cell['sigma']:g}", f"{cell['psnr_input']:.2f}", *figures, *published]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _grid(cells: list[CellSummary]) -> list[str]:
    qualities = list(dict.fromkeys(c["quality"] for c in cells))
    header = "| sigma \\ quality | " + " | ".join(_q(q) for q in qualities) + " |"
    lines = [header, "|" + " --- |" * (1 + len(qualities))]
    for sigma in dict.fromkeys(c["sigma"] for c in cells):
        row = []
        for quality in qualities:
            c = _cell(cells, sigma, quality)
            gain = "" if c["psnr_gain"] is None else f" ({_db(c['psnr_gain'], '+')})"
            row.append(
                f"{_db(c['psnr_input'])} → **{_db(c['psnr_model'])}**{gain}<br>"
                f"{c['ssim_input']:.3f} → {c['ssim_model']:.3f}"
            )
        lines.append(f"| {sigma:g} | " + " | ".join(row) + " |")
    return lines


def _bm3d_table(name: str, part: Bm3dSummary) -> list[str]:
    lines = [
        f"CBM3D on {name}, images {', '.join(part['images'])} (model on the same images):",
        "",
        "| sigma | quality | input | CBM3D | ours | ours - CBM3D |",
        "|" + " --- |" * 6,
    ]
    for c in part["cells"]:
        lines.append(
            f"| {c['sigma']:g} | {_q(c['quality'])} | {c['psnr_input']:.2f} | {c['psnr_bm3d']:.2f} | "
            f"{c['psnr_model']:.2f} | {c['psnr_model'] - c['psnr_bm3d']:+.2f} |"
        )
    return lines + [""]


def _cell(cells: list[CellSummary], sigma: float, quality: int | None) -> CellSummary:
    return next(c for c in cells if (c["sigma"], c["quality"]) == (sigma, quality))


def bars(summary: ReleaseSummary) -> list[tuple[str, bool, str]]:
    """The release bars, each (what, met, the figures behind it); the anchor bars count the blind model, and a
    conditioned model's told-sigma figures (the comparison CBM3D, itself told sigma, is judged on) follow them."""
    cbsd = summary["anchor"]["CBSD68"]
    fmt = ", ".join
    anchor = []
    keys: tuple[tuple[Literal["psnr_model", "psnr_told"], str], ...] = (
        ("psnr_model", ""),
        ("psnr_told", ", told the true sigma"),
    )
    for key, how in keys:
        if not all(key in c for c in cbsd):
            continue
        for method, level in (("CBM3D", "minimum bar"), ("DnCNN", "target")):
            margins = [c[key] - PUBLISHED["CBSD68"][method][i] for i, c in enumerate(cbsd)]
            anchor.append(
                (
                    f"beats {method} on CBSD68 at sigma 15 / 25 / 50{how} ({level})",
                    min(margins) > 0,
                    fmt(f"{d:+.2f}" for d in margins),
                )
            )
    degraded = [c for cells in summary["real"].values() for c in cells if (c["sigma"], c["quality"]) != (0, None)]
    clean = {n: _cell(cells, 0, None) for n, cells in summary["real"].items()}
    bm3d = [c["psnr_model"] - c["psnr_bm3d"] for part in summary["bm3d"].values() for c in part["cells"]]
    return anchor + [
        (
            "gains in every degraded real-protocol cell",
            min(c["psnr_gain"] for c in degraded) > 0,
            f"least gain {min(c['psnr_gain'] for c in degraded):+.2f} dB",
        ),
        (
            "beats CBM3D in every cell where it ran",
            bool(bm3d) and min(bm3d) > 0,
            f"least margin {min(bm3d):+.2f} dB" if bm3d else "not run",
        ),
        (
            f"leaves clean images alone ({CLEAN_CELL_BAR_DB:g} dB or more)",
            min(_finite(c["psnr_model"]) for c in clean.values()) >= CLEAN_CELL_BAR_DB,
            fmt(f"{n} {_db(c['psnr_model'])} dB" for n, c in clean.items()),
        ),
    ]


def _failure(summary: ReleaseSummary, link: str) -> list[str]:
    lines = []
    for name, part in summary["failure"].items():
        weakest = ", ".join(
            f"sigma {c['sigma']:g} q {_q(c['quality'])} ({c['psnr_gain']:+.2f} dB)" for c in part["least_gain_cells"]
        )
        lines.append(f"- {name}: weakest cells {weakest}.")
    lines += ["", "| crop (degraded / restored / clean, Kodak24) | what | cell | PSNR in -> out |", "|" + " --- |" * 4]
    for crop in (c for c in summary["crops"] if "strength" not in c):
        lines.append(
            f"| ![{crop['what']}]({link}/{crop['file']}) | {crop['what']} ({crop['name']}) | {crop['cell']} "
            f"| {crop['psnr_input']:.2f} -> {crop['psnr_model']:.2f} |"
        )
    return lines


def render(summary: ReleaseSummary, readme_dir: Path, docs_dir: Path) -> str:
    """The results block for a README in `readme_dir` (links relative to it)."""
    link = Path(os.path.relpath(docs_dir.resolve(), readme_dir.resolve())).as_posix()
    lines = [
        BEGIN,
        "",
        f"Model `{summary['model']}` (sha256 `{summary['model_sha256'][:12]}`), "
        f"{summary['parameters']:,} parameters, {summary['macs_per_megapixel'] / 1e9:.1f} GMAC per megapixel. "
        f"Generated by `{summary['command']}`; every figure is in [`results.json`]({link}/results.json), the "
        "full per-image tables, plots and failure reports are written under `out/release/`.",
        "",
        "**Bars**",
        "",
    ]
    lines += [f"- {'met' if met else '**not met**'}: {what}: {figures}" for what, met, figures in bars(summary)]
    lines += [
        "",
        "**Noise only, anchor protocol** (unclipped float noise, `np.random.seed(0)`; PSNR RGB dB; "
        "published figures from the DRUNet paper; Kodak24 comparisons indicative)",
        "",
    ]
    lines += _anchor_table(summary)
    for name, cells in summary["real"].items():
        lines += [
            "",
            f"**Noise then JPEG, real protocol, {name}** (noise, 8 bits, libjpeg 4:2:0; per cell: PSNR input "
            "→ model (gain), then SSIM input → model)",
            "",
        ]
        lines += _grid(cells)
    lines += ["", "**CBM3D told the true sigma, on a subset** (it knows nothing of JPEG)", ""]
    for name, part in summary["bm3d"].items():
        lines += _bm3d_table(name, part)
    lines += ["**Failure report** (the full reports: `out/release/<set>_real/failure.md`)", ""]
    lines += _failure(summary, link)
    lines += _strength(summary, link)
    return "\n".join(lines + ["", END])


def render_headline(summary: ReleaseSummary, readme_dir: Path, results_page: Path) -> str:
    """The headline block for a README in `readme_dir`: the noise-only table beside the published figures, and a
    link to the full results page."""
    link = Path(os.path.relpath(results_page.resolve(), readme_dir.resolve())).as_posix()
    lines = [HEADLINE_BEGIN, "", *_anchor_table(summary), ""]
    lines.append(
        "PSNR (RGB, dB), Gaussian noise only, the published methods' own protocol; their figures are the DRUNet "
        f"paper's (`release/published.json`). FBCNN removes JPEG artifacts only and publishes colour figures on "
        "LIVE1, BSDS500 and ICB, sets not evaluated here (nor are its weights downloaded), so it has no column. "
        f"Noise with JPEG, CBM3D run here, failure cases: [{link}]({link})."
    )
    return "\n".join(lines + ["", HEADLINE_END])


def _strength(summary: ReleaseSummary, link: str) -> list[str]:
    """The strength control's figure, when the model is conditioned."""
    lines = []
    for entry in (c for c in summary["crops"] if "strength" in c):
        figures = ", ".join(f"{row['variant']} {row['psnr']:.2f} dB" for row in entry["strength"])
        lines += [
            "",
            f"**Strength control** ({entry['name']}, cell {entry['cell']}, whole-image PSNR: {figures}; "
            "a larger sigma asks for more cleaning)",
            "",
        ]
        lines.append(f"![strength control]({link}/{entry['file']})")
    return lines


def replace_block(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) between those markers in `path` (appended at the
    end when the markers are absent)."""
    text = path.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
