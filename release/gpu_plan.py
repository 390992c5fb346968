"""Plan and summarise the GPU release run of `release/gpu_release.sh`.

python -m release.gpu_plan plan CAL_RUN_DIR --wall-s W --budget-s B --out CAL.json      (prints run.steps)
python -m release.gpu_plan summary RUN_DIR --calibration CAL.json --wall-s W --rc RC --out OUTDIR/summary.json

`plan`: the trainer has no time limit and its cosine schedule needs the step count up front, so a short run of the
same config first measures the steady step rate (median img/s of its log windows after the first, / batch) and its
fixed cost (start-up, pipeline fill, the final validation and checkpoint: its wall time less steps / rate). The main
run gets MARGIN x (budget - fixed cost) x rate steps; the margin pays for its validations and checkpoints (one per
1,000 steps) and for clock noise. It never gets fewer steps than the calibration ran.
`summary`: what the run did (device, versions, steps, images seen, wall time, median img/s, last validation) and
the files beside the summary, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import yaml

from model import count_params, create_model, macs_per_megapixel

MARGIN = 0.9


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def steady_img_per_s(rows: list[dict]) -> float:
    """Median img/s of the log windows after the first (which holds the start-up); the first if it is alone."""
    rates = [row["img_per_s"] for row in rows if "img_per_s" in row]
    if not rates:
        raise ValueError("no training window in metrics.jsonl: the run logged no step")
    return statistics.median(rates[1:] or rates)


def plan_steps(rows: list[dict], batch_size: int, steps_run: int, wall_s: float, budget_s: float) -> dict:
    """Steps that fit `budget_s` at the calibration's steady rate, after its fixed cost (see the module doc)."""
    steps_per_s = steady_img_per_s(rows) / batch_size
    fixed_s = max(0.0, wall_s - steps_run / steps_per_s)
    steps = max(steps_run, int(MARGIN * (budget_s - fixed_s) * steps_per_s))
    return {
        "steps": steps,
        "steps_per_s": round(steps_per_s, 3),
        "fixed_s": round(fixed_s, 1),
        "calibration_steps": steps_run,
        "calibration_wall_s": wall_s,
        "budget_s": budget_s,
    }


def last_validation(rows: list[dict]) -> dict | None:
    vals = [row for row in rows if "val" in row]
    if not vals:
        return None
    keep = ("psnr_model", "psnr_input", "psnr_conditioned", "ssim_model", "ssim_input")
    return {"step": vals[-1]["step"]} | {k: v for k, v in vals[-1]["val"].items() if k in keep}


def device_info() -> dict:
    if not torch.cuda.is_available():
        return {"device": "cpu", "torch": torch.__version__, "cuda": None}
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}


def run_status(rc: int) -> str:
    if rc == 0:
        return "finished"
    if rc == 124:
        return "stopped at its time limit (SIGTERM: last.pt written at the step it reached)"
    return f"failed (exit code {rc}; see train.log)"


def summarise(run_dir: Path, calibration: dict, wall_s: float, rc: int, out: Path) -> dict:
    """The summary JSON; with no config.yaml (the run never started) only the device, status and files."""
    files = {p.name: p.stat().st_size for p in sorted(out.parent.iterdir()) if p.is_file() and p != out}
    summary = device_info() | {"status": run_status(rc), "wall_s": wall_s, "calibration": calibration}
    if (run_dir / "config.yaml").is_file():
        summary |= run_record(run_dir)
    return summary | {"files": files}


def run_record(run_dir: Path) -> dict:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = read_metrics(run_dir)
    last = run_dir / "last.pt"
    step = torch.load(last, map_location="cpu", weights_only=True)["step"] if last.is_file() else 0
    vals = [row["val"]["psnr_model"] for row in rows if "val" in row]
    last_val = last_validation(rows)
    model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    return {
        "model": {
            "name": cfg["model"]["name"],
            "kwargs": cfg["model"]["kwargs"],
            "init": cfg["model"]["init"],
            "params": count_params(model),
            "gmac_per_megapixel": round(macs_per_megapixel(model) / 1e9, 1),
        },
        "steps_planned": cfg["run"]["steps"],
        "steps": step,
        "batch_size": cfg["loader"]["batch_size"],
        "patch_size": cfg["loader"]["patch_size"],
        "images_seen": step * cfg["loader"]["batch_size"],
        "median_img_per_s": round(steady_img_per_s(rows), 1) if any("img_per_s" in r for r in rows) else None,
        "last_val_psnr": last_val["psnr_model"] if last_val else None,
        "last_val": last_val,
        "best_val_psnr": max(vals) if vals else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("plan", "summary"))
    parser.add_argument("run_dir", type=Path, help="the calibration run (plan) or the main run (summary)")
    parser.add_argument("--wall-s", type=float, required=True, help="the run's wall time, seconds")
    parser.add_argument("--budget-s", type=float, help="plan: wall seconds the main run may take")
    parser.add_argument("--calibration", type=Path, help="summary: the JSON that plan wrote")
    parser.add_argument("--rc", type=int, default=0, help="summary: the main run's exit code")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.command == "plan":
        if args.budget_s is None:
            parser.error("plan needs --budget-s")
        cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text())
        result = plan_steps(
            read_metrics(args.run_dir), cfg["loader"]["batch_size"], cfg["run"]["steps"], args.wall_s, args.budget_s
        )
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(result["steps"])
        return
    calibration = json.loads(args.calibration.read_text()) if args.calibration and args.calibration.is_file() else {}
    summary = summarise(args.run_dir, calibration, args.wall_s, args.rc, args.out)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary.get(k) for k in ("device", "status", "steps", "median_img_per_s", "last_val_psnr")}))


if __name__ == "__main__":
    main()
