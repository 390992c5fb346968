"""Plots of an evaluation result (matplotlib, Agg backend, PNG): gain heatmap and PSNR vs sigma per quality."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from evaluate.results import CellSummary, EvalResult, figure


def _axes_values(cells: list[CellSummary]) -> tuple[list[float], list[int | None]]:
    """Sorted sigmas and qualities of the cells (no-JPEG last, as the cleanest condition)."""
    sigmas = sorted({c["sigma"] for c in cells})
    qualities = sorted({c["quality"] for c in cells}, key=lambda q: 101 if q is None else q)
    return sigmas, qualities


def _quality_name(quality: int | None) -> str:
    return "no JPEG" if quality is None else f"q{quality}"


def gain_heatmap(result: EvalResult, path: Path) -> Path:
    """Heatmap of mean PSNR gain (model - input, dB) over sigma (rows) x JPEG quality (columns)."""
    cells = result["cells"]
    sigmas, qualities = _axes_values(cells)
    grid = np.full((len(sigmas), len(qualities)), np.nan)
    for cell in cells:
        grid[sigmas.index(cell["sigma"]), qualities.index(cell["quality"])] = cell["psnr_gain"]
    fig, ax = plt.subplots(figsize=(1.4 * len(qualities) + 2.5, 0.9 * len(sigmas) + 1.8))
    finite = grid[np.isfinite(grid)]
    limit = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    image = ax.imshow(grid, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        ax.text(col, row, "n/a" if np.isnan(value) else f"{value:+.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(qualities)), [_quality_name(q) for q in qualities])
    ax.set_yticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
    ax.set_xlabel("JPEG quality")
    ax.set_ylabel("sigma (0-255)")
    ax.set_title(f"PSNR gain, dB ({result['metric']['psnr']}, {result['protocol']})")
    fig.colorbar(image, ax=ax, label="dB")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def psnr_vs_sigma(result: EvalResult, path: Path) -> Path:
    """PSNR against sigma, one colour per quality: model solid, input dashed, baselines dotted."""
    cells = result["cells"]
    sigmas, qualities = _axes_values(cells)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"model": "-o", "input": "--", **{m: ":s" for m in result["methods"] if m not in ("input", "model")}}
    for i, quality in enumerate(qualities):
        colour = plt.cm.viridis(i / max(1, len(qualities) - 1))
        chosen = sorted((c for c in cells if c["quality"] == quality), key=lambda c: c["sigma"])
        for method, style in styles.items():
            values = [figure(c, f"psnr_{method}") for c in chosen]
            label = f"{_quality_name(quality)} {method}"
            ax.plot([c["sigma"] for c in chosen], values, style, color=colour, label=label, markersize=4)
    ax.set_xticks(sigmas)
    ax.set_xlabel("sigma (0-255)")
    ax.set_ylabel(f"PSNR, dB ({result['metric']['psnr']})")
    ax.set_title(f"PSNR vs sigma ({result['protocol']} protocol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(result: EvalResult, out: Path) -> list[Path]:
    """Write `gain_heatmap.png` and `psnr_vs_sigma.png` under `out`."""
    return [gain_heatmap(result, out / "gain_heatmap.png"), psnr_vs_sigma(result, out / "psnr_vs_sigma.png")]
