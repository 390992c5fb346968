"""release/gpu_release.sh: refuses to run without CUDA, plans run.steps from a calibration, and its CPU rehearsal
trains for real (tiny shards packed here, the release config at batch 2 of 64 px) and brings back every file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import natural_image
from PIL import Image

from model import load_model
from release.gpu_plan import MARGIN, plan_steps
from shards.pack import pack

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "release" / "gpu_release.sh"
MAX_BYTES = 16 * 1024 * 1024


def _release(out: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    environ = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"} | extra_env
    return subprocess.run(
        ["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, env=environ, timeout=180
    )


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_without_cuda_it_stops_at_once_and_says_why(tmp_path):
    done = _release(tmp_path / "out", CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp_path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "CUDA is absent" in done.stdout and "--rehearse" in done.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu_release.log"]
    assert not list(tmp_path.glob("gpu_release.*"))  # no scratch folder: nothing was started


def test_plan_fits_the_budget_after_the_fixed_cost():
    rows = [{"img_per_s": 10.0}, {"img_per_s": 320.0}, {"img_per_s": 330.0}, {"img_per_s": 310.0}, {"val": {}}]
    plan = plan_steps(rows, batch_size=32, steps_run=60, wall_s=36.0, budget_s=480.0)
    assert plan["steps_per_s"] == 10.0  # the median after the start-up window, / batch
    assert plan["fixed_s"] == 30.0  # 36 s less 60 steps at 10 steps/s
    assert plan["steps"] == int(MARGIN * 450 * 10)
    assert plan_steps(rows, 32, 60, wall_s=600.0, budget_s=480.0)["steps"] == 60  # never fewer than calibrated


@pytest.mark.slow
def test_rehearsal_trains_and_brings_back_every_file(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(10):
        Image.fromarray(natural_image(72, 80, seed=900 + i)).save(tmp_path / "src" / f"{i}.png")
    pack(tmp_path / "src", tmp_path / "shards", val_fraction=0.2, seed=0, min_shards=2)
    out = tmp_path / "out"
    budgets = ["--shards", str(tmp_path / "shards"), "--train-s", "12", "--cal-steps", "4"]
    done = _release(out, "--rehearse", *budgets, TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert len(files) <= 8 and max(files.values()) <= MAX_BYTES  # a few files, each within --max-file-mib 16
    expected = {
        "model-fp16.pt",
        "last-fp32.pt",
        "metrics.jsonl",
        "config.yaml",
        "summary.json",
        "train.log",
        "gpu_release.log",
    }
    assert expected <= set(files) and any(name.startswith("sample-step_") for name in files)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("device", "torch", "status", "steps", "images_seen", "wall_s", "median_img_per_s", "last_val_psnr"):
        assert summary[key] is not None, key
    assert summary["status"] == "finished" and summary["steps"] == summary["steps_planned"] >= 4
    assert summary["images_seen"] == 2 * summary["steps"] and summary["calibration"]["calibration_steps"] == 4
    assert summary["model"]["params"] == 3_022_323
    model = load_model(out / "model-fp16.pt")
    assert model.film is not None  # the conditioned release model, as trained


def test_one_gpu_command_parses_and_explains_itself():
    """release/gpu.sh (check, then release, packed into few files) is valid bash, refuses a call without OUTDIR
    or with an unknown option, and its help names the budgets."""
    gpu = ROOT / "release" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(gpu)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(gpu)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: bash release/gpu.sh OUTDIR" in done.stderr
    helped = subprocess.run(["bash", str(gpu), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 2 and "reports.tar.gz" in helped.stdout and "--budget-s S" in helped.stdout
    bad = subprocess.run(["bash", str(gpu), "out", "--budget"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option --budget" in bad.stderr
