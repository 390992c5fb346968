"""The release results: `python -m release.evaluate [--model PATH]` runs every published protocol on CBSD68 and
Kodak24 and writes the results page and the README's headline, so no figure there is typed by hand.

Runs (each also written in full, with plots and failure report, under `--out`):
- anchor protocol (noise only, unclipped, `np.random.seed(0)`), sigma 15 / 25 / 50, next to the published figures;
  a conditioned model runs blind and told the true sigma (as CBM3D and FFDNet are);
- real protocol (noise, 8 bits, libjpeg 4:2:0), sigma {0, 5, 15, 25, 50} x quality {10, 30, 50, 90, none};
- CBM3D told the true sigma (`bm3d` package) on the first `--bm3d-limit` images, noise-bearing cells; it does not
  depend on the model, so its run is reused from `--out`, or carried over from the committed results.json, when the
  same images and cells were measured before (`python -m evaluate --model identity --baseline bm3d ...` re-measures).
Writes `docs/results/results.json` (the figures, the bars, per-image check rows that `tests/test_release.py`
re-measures), `docs/results/*.png` (Kodak24 crops; BSDS500 images are research-only, so none of them is copied), the
results block of docs/results.md and the headline block of README.md (`release.report`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import cast

from evaluate.cli import list_images, load_model_arg
from evaluate.harness import evaluate
from evaluate.protocols import Cell
from evaluate.report import jsonable, write_outputs
from evaluate.results import EvalResult
from evaluate.strength import strength_figure
from model import SHIPPED_MODEL, count_params, is_conditioned, macs_per_megapixel
from pipeline.command import run_command
from pipeline.io import load_rgb8
from release.report import HEADLINE_BEGIN, HEADLINE_END, render, render_headline, replace_block
from release.results import Bm3dCell, Bm3dSummary, CachedRun, CheckRow, ReleaseSummary

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PAGE = ROOT / "docs" / "results.md"
SETS = ("CBSD68", "Kodak24")
ANCHOR_SIGMAS = (15.0, 25.0, 50.0)
GRID_SIGMAS = (0.0, 5.0, 15.0, 25.0, 50.0)
GRID_QUALITIES = (10, 30, 50, 90, None)
BM3D_IMAGES = {"CBSD68": 3, "Kodak24": 0}  # CBM3D takes 10-20 s per image and cell here: a stated subset
CHECK_IMAGES = 2  # the first images of each set whose per-image figures the test re-measures
CHECK_CELLS = {"anchor": ((25.0, None),), "real": ((0.0, None), (15.0, 30), (50.0, 10))}
STRENGTH_CELL, STRENGTH_TOLD = Cell(25.0, 50), [5.0, 15.0, 25.0, 40.0]  # the strength figure (Kodak24's first image)


def display_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (so results read the same on every machine)."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_set(data_root: Path, name: str, limit: int | None = None) -> tuple[list, list[str]]:
    paths = list_images(data_root / name, limit)
    return [load_rgb8(p).copy() for p in paths], [p.stem for p in paths]


def run(
    model, images, names, protocol, sigmas, qualities, out: Path, baseline=None, model_sha: str = "", told=False
) -> CachedRun:
    """One `evaluate` run, written in full under `out`; returns the result without its crops. A run of the same
    model file (sha256), images, cells and methods already in `out` is reused: every figure is deterministic."""
    cached = out / "results.json"
    if model_sha and cached.exists():
        result = json.loads(cached.read_text())
        cells = [(c["sigma"], c["quality"]) for c in result["cells"]]
        if (
            result.get("model_sha256") == model_sha
            and result.get("names") == names
            and cells == [(s, q) for s in sigmas for q in qualities]
            and ("told" in result["methods"]) == told
        ):
            return result
    result = evaluate(model, images, sigmas, qualities, protocol, "auto", names=names, baseline=baseline, told=told)
    write_outputs(result, out)
    kept = cast(CachedRun, {k: v for k, v in result.items() if k != "samples"})
    kept["model_sha256"], kept["names"] = model_sha, names
    cached.write_text(json.dumps(jsonable(kept), indent=2) + "\n")
    return kept


def bm3d_run(data_root: Path, name: str, limit: int, out: Path, published: Path | None = None) -> CachedRun:
    """CBM3D on the first `limit` images, noise-bearing cells; reused from `out` when it already holds that run
    (as `python -m evaluate --model identity --baseline bm3d --limit N ...` writes it), else carried over from the
    committed `published` results.json when that measured the same images and cells (CBM3D does not depend on the
    model and its noise is seeded: re-running it would cost ~20 CPU-minutes for the same figures)."""
    cached = out / "results.json"
    names = [p.stem for p in list_images(data_root / name, limit)]
    cells = [(s, q) for s in GRID_SIGMAS if s > 0 for q in GRID_QUALITIES]
    if cached.exists():
        result = json.loads(cached.read_text())
        if [Path(i).stem for i in result.get("images", [])] == names and [
            (c["sigma"], c["quality"]) for c in result["cells"]
        ] == cells:
            return result | {"names": names}
    previous = json.loads(published.read_text()).get("bm3d", {}).get(name) if published and published.exists() else None
    same = previous and previous["images"] == names and [(c["sigma"], c["quality"]) for c in previous["cells"]] == cells
    if published and previous and same:
        print(f"CBM3D on {name}: carried over from {display_path(published)} (same images and cells)")
        return CachedRun(cells=previous["cells"], names=names)
    images, names = load_set(data_root, name, limit)
    result = run(None, images, names, "real", [s for s in GRID_SIGMAS if s > 0], GRID_QUALITIES, out, "bm3d")
    result["images"] = names
    cached.write_text(json.dumps(jsonable(result), indent=2) + "\n")
    return result | {"names": names}


def bm3d_summary(bm3d: CachedRun, real: CachedRun) -> Bm3dSummary:
    """BM3D and the model on the same images and cells (the model's figures from its full real run)."""
    names = set(bm3d["names"])
    cells = []
    for cell in bm3d["cells"]:
        rows = [
            r
            for r in real["per_image"]
            if r["name"] in names and (r["sigma"], r["quality"]) == (cell["sigma"], cell["quality"])
        ]
        model = sum(r["psnr_model"] for r in rows) / len(rows)
        cells.append(
            Bm3dCell(
                sigma=cell["sigma"],
                quality=cell["quality"],
                psnr_input=cell["psnr_input"],
                psnr_bm3d=cell["psnr_bm3d"],
                psnr_model=model,
            )
        )
    return Bm3dSummary(images=bm3d["names"], cells=cells)


def check_rows(name: str, protocol: str, result: EvalResult) -> list[CheckRow]:
    """Per-image figures the test re-measures: the blind model's, and the told model's where it ran."""
    wanted, rows = set(CHECK_CELLS[protocol]), []
    for r in result["per_image"]:
        if r["index"] >= CHECK_IMAGES or (r["sigma"], r["quality"]) not in wanted:
            continue
        row = CheckRow(set=name, protocol=protocol, sigma=r["sigma"], quality=r["quality"], index=r["index"])
        row["name"], row["psnr_model"] = r["name"], r["psnr_model"]
        if "psnr_told" in r:
            row["psnr_told"] = r["psnr_told"]
        rows.append(row)
    return rows


def copy_crops(real_out: Path, docs: Path) -> list[dict]:
    """The worst Kodak24 tile of each content class and the worst image: copied next to results.json."""
    result = json.loads((real_out / "results.json").read_text())
    picks, seen = [], set()
    for record in result["worst_tiles"]:
        if record["rank"] == 1 and record["content"] not in seen:
            seen.add(record["content"])
            picks.append({**record, "what": f"worst {record['content']} tile"})
    picks.append({**result["worst_images"][0], "what": "worst image (crop at its worst tile)"})
    (docs / "crops").mkdir(parents=True, exist_ok=True)
    for pick in picks:
        target = f"crops/kodak24_{Path(pick['file']).name}"
        shutil.copyfile(real_out / pick["file"], docs / target)
        pick["file"] = target
    return picks


def summarise(
    model_path: Path,
    model,
    runs: dict[tuple[str, str], CachedRun],
    bm3d: dict[str, CachedRun],
    crops: list[dict],
    command: str,
) -> ReleaseSummary:
    summary: ReleaseSummary = {
        "model": str(model_path.resolve().relative_to(ROOT))
        if model_path.resolve().is_relative_to(ROOT)
        else str(model_path),
        "model_sha256": sha256(model_path),
        "parameters": count_params(model),
        "macs_per_megapixel": macs_per_megapixel(model),
        "command": command,
        "anchor": {n: runs[n, "anchor"]["cells"] for n in SETS},
        "real": {n: runs[n, "real"]["cells"] for n in SETS},
        "bm3d": {n: bm3d_summary(bm3d[n], runs[n, "real"]) for n in SETS if n in bm3d},
        "failure": {
            n: {
                "least_gain_cells": runs[n, "real"]["least_gain_cells"],
                "tile_classes": runs[n, "real"]["tile_classes"],
            }
            for n in SETS
        },
        "crops": crops,
        "check": [row for (n, p), r in runs.items() for row in check_rows(n, p, r)],
        "versions": runs[SETS[0], "real"].get("versions", {}),
    }
    return jsonable(summary)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="checkpoint (default: the shipped model)")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "test")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "release", help="full evaluation outputs")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "results", help="results.json and crops")
    parser.add_argument("--bm3d-limit", type=int, help=f"images per set for CBM3D (0 = skip; default {BM3D_IMAGES})")
    parser.add_argument(
        "--pages", "--readme", type=Path, nargs="*", default=[RESULTS_PAGE], help="pages with the results block"
    )
    parser.add_argument(
        "--headline", type=Path, nargs="*", default=[ROOT / "README.md"], help="pages with the headline"
    )
    parser.add_argument(
        "--prepare",
        choices=SETS,
        help="only run this set's evaluations into --out and stop (one process per set runs "
        "them in parallel; the full command then reuses them)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = load_model_arg(str(args.model))
    if model is None:
        raise SystemExit("--model identity: the release results are a checkpoint's (the identity is each cell's input)")
    runs: dict[tuple[str, str], CachedRun] = {}
    bm3d: dict[str, CachedRun] = {}
    model_sha = sha256(args.model)
    conditioned = is_conditioned(model)
    for name in [args.prepare] if args.prepare else SETS:
        images, names = load_set(args.data_root, name)
        for protocol, sigmas, qualities in (("anchor", ANCHOR_SIGMAS, (None,)), ("real", GRID_SIGMAS, GRID_QUALITIES)):
            out = args.out / f"{name}_{protocol}"
            told = conditioned and protocol == "anchor"  # noise only: told sigma, as CBM3D and FFDNet are
            runs[name, protocol] = run(
                model, images, names, protocol, sigmas, qualities, out, model_sha=model_sha, told=told
            )
    for name in [args.prepare] if args.prepare else SETS:  # last: a CBM3D run already in --out is reused
        limit = BM3D_IMAGES[name] if args.bm3d_limit is None else args.bm3d_limit
        if limit:
            bm3d[name] = bm3d_run(args.data_root, name, limit, args.out / f"bm3d_{name}", args.docs / "results.json")
    if args.prepare:
        return
    args.docs.mkdir(parents=True, exist_ok=True)
    crops = copy_crops(args.out / "Kodak24_real", args.docs)
    if conditioned:
        images, names = load_set(args.data_root, "Kodak24", 1)
        rows = strength_figure(model, images[0], STRENGTH_CELL, STRENGTH_TOLD, args.docs / "strength.png")
        crops.append({"strength": rows, "file": "strength.png", "name": names[0], "cell": STRENGTH_CELL.name})
    command = f"python -m release.evaluate --model {display_path(args.model)}" + (
        "" if args.bm3d_limit is None else f" --bm3d-limit {args.bm3d_limit}"
    )
    summary = summarise(args.model, model, runs, bm3d, crops, command)
    (args.docs / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_pages(summary, args.pages, args.headline, args.docs)
    print(f"wrote {args.docs}/results.json and the blocks of {', '.join(map(str, args.pages + args.headline))}")


def write_pages(summary: ReleaseSummary, pages: list[Path], headlines: list[Path], docs: Path) -> None:
    """The full results block into each of `pages`, the headline (linking to the first page) into `headlines`."""
    for page in pages:
        replace_block(page, render(summary, page.parent, docs))
    for page in headlines:
        block = render_headline(summary, page.parent, pages[0] if pages else RESULTS_PAGE)
        replace_block(page, block, HEADLINE_BEGIN, HEADLINE_END)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m release.evaluate"))
