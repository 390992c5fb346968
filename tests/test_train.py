"""The trainer: config merging, schedule, exact resume (in process and after SIGTERM), NaN stop, run outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_config

from model import load_model
from train.checkpoint import load
from train.config import OptimConfig, default_config, load_config, parse_set
from train.loop import fit
from train.step import lr_at

ROOT = Path(__file__).resolve().parents[1]
HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load(path)["model"]


def test_config_layers_and_strictness(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 0.002\nloader:\n  batch_size: 4\n")
    cfg = load_config("cpu", yaml_file, ["loader.batch_size=6", "log.wandb=off", "degrade.sigma_max_255=30"])
    assert cfg.optim.lr == 0.002 and cfg.loader.batch_size == 6 and cfg.log.wandb == "off"
    assert cfg.degrade.sigma_max_255 == 30.0 and isinstance(cfg.degrade.sigma_max_255, float)
    assert default_config("cuda").loader.batch_size > default_config("cpu").loader.batch_size
    with pytest.raises(KeyError, match="optim.lrr"):
        load_config("cpu", None, ["optim.lrr=1"])
    with pytest.raises(TypeError, match="loader.batch_size"):
        load_config("cpu", None, ["loader.batch_size=big"])
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["novalue"])
    with pytest.raises(ValueError, match="run.log_every"):
        load_config("cpu", None, ["run.log_every=0"])
    with pytest.raises(ValueError, match="loss.kind"):
        load_config("cpu", None, ["loss.kind=l3"])


def test_dict_fields_merge_by_key_and_floats_parse():
    cfg = load_config("cpu", None, ["model.kwargs.width=32", "optim.lr=1e-3", "degrade.subsampling.4:4:4=0.5"])
    assert cfg.model.kwargs["width"] == 32 and cfg.model.kwargs["enc_blocks"] == [1, 1, 1, 1]
    assert cfg.optim.lr == 0.001 and cfg.degrade.subsampling == {"4:2:0": 0.7, "4:2:2": 0.1, "4:4:4": 0.5}


def test_a_checkpoint_never_holds_nan_weights(shards, tmp_path):
    from train.checkpoint import save
    from train.step import build_state

    cfg = tiny_config()
    state = build_state(cfg, torch.device("cpu"))
    save(state, cfg, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        next(state.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not finite"):
        save(state, cfg, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before and list(tmp_path.iterdir()) == [tmp_path / "last.pt"]


def test_lr_schedule_warms_up_then_decays():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1) and lr_at(9, cfg, 100) == pytest.approx(1.0)
    assert lr_at(10, cfg, 100) == pytest.approx(1.0) and lr_at(100, cfg, 100) == pytest.approx(0.1)
    assert lr_at(30, cfg, 100) > lr_at(60, cfg, 100)


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "dali",
            marks=[pytest.mark.dali, pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")],
        ),
    ],
)
def test_resume_is_exact_in_process(shards, tmp_path, backend):
    """Stop at step 5 of 12 and resume (the loader starts at step 5, nothing is replayed): the same weights, bit for
    bit, as a run that never stopped; on DALI too (its CPU-only mode here)."""
    cfg = lambda: tiny_config(f"loader.backend={backend}")  # noqa: E731 (fit may change the config it gets)
    fit(cfg(), shards, tmp_path / "straight")
    fit(cfg(), shards, tmp_path / "halves", stop_after=5)
    assert load(tmp_path / "halves" / "last.pt")["step"] == 5
    fit(cfg(), shards, tmp_path / "halves", resume=tmp_path / "halves" / "last.pt")
    straight, halves = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "halves" / "last.pt")
    assert all(torch.equal(straight[k], halves[k]) for k in straight)


def test_sigterm_checkpoints_and_resume_continues_exactly(shards, tmp_path):
    """A real run with a loader worker gets SIGTERM on its whole process group (as Ctrl-C, scancel or `kill -- -PGID`
    deliver it) mid-run; it checkpoints, and `--resume auto` ends with the weights of an uninterrupted run."""
    extra = ["run.steps=30", "loader.workers=1"]
    fit(tiny_config(*extra), shards, tmp_path / "straight")
    run_dir = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "train" / "run.py"), "--shards", str(shards), "--out", str(run_dir)]
    sets = [arg for item in [*TINY, *extra] for arg in ("--set", item)]
    process = subprocess.Popen(command + sets, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"step": 4' in metrics.read_text()):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 143, output  # 128 + SIGTERM: stopped, not finished
    stopped_at = load(run_dir / "last.pt")["step"]
    assert 4 <= stopped_at < 30 and "stopped by signal" in metrics.read_text()
    refused = subprocess.run(command + sets, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "already holds a run" in refused.stderr
    subprocess.run(command + ["--resume", "auto"], check=True, capture_output=True, timeout=300)  # saved config
    straight, resumed = weights(tmp_path / "straight" / "last.pt"), weights(run_dir / "last.pt")
    assert load(run_dir / "last.pt")["step"] == 30
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_nan_stops_with_a_clear_message(shards, tmp_path):
    cfg = tiny_config("optim.lr=1.0e+30", "optim.clip_grad_norm=0", "optim.warmup_steps=0", "loss.kind=l1")
    with pytest.raises(FloatingPointError, match="not finite"):
        fit(cfg, shards, tmp_path / "nan")


def test_sanity_warning_when_the_model_does_not_beat_its_input(shards, tmp_path):
    """With a zero learning rate the (identity-initialised) model never beats the degraded input: warn loudly."""
    with pytest.warns(UserWarning, match="not below the degraded input"):
        fit(tiny_config("optim.lr=0", "run.sanity_steps=4", "run.steps=6"), shards, tmp_path / "stuck")
    warnings = [json.loads(line) for line in (tmp_path / "stuck" / "metrics.jsonl").read_text().splitlines()]
    assert any("warning" in row for row in warnings)


def test_run_outputs(shards, tmp_path):
    """metrics.jsonl lines, resolved config, sample grids, loadable last/best checkpoints, W&B offline files."""
    wandb_mode = "log.wandb=offline" if _has_wandb() else "log.wandb=off"
    result = fit(tiny_config(wandb_mode), shards, tmp_path / "run")
    run_dir = tmp_path / "run"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(2, 13, 2))
    for key in (
        "loss_input",
        "lr",
        "img_per_s",
        "data_wait_share",
        "share_noise",
        "share_jpeg",
        "sigma_mean_255",
        "quality_mean",
    ):
        assert key in train_rows[0]
    val_rows = [r["val"] for r in lines if "val" in r]
    assert len(val_rows) == 2 and "buckets" in val_rows[0] and result == val_rows[-1]
    assert (run_dir / "config.yaml").is_file() and len(list((run_dir / "samples").glob("*.png"))) == 2
    for name in ("last.pt", "best.pt"):
        model = load_model(run_dir / name)
        assert model(torch.rand(1, 3, 20, 28)).shape == (1, 3, 20, 28)
    if _has_wandb():
        assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run folder missing"


def _has_wandb() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("WANDB_MODE", "offline") != "disabled"


def test_wsd_schedule_holds_the_peak_then_decays_linearly_from_any_step():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_start=10**9)
    assert lr_at(0, cfg, 10**9) == pytest.approx(0.1) and lr_at(10**6, cfg, 10**9) == 1.0  # the trunk: constant
    cooled = OptimConfig(**{**vars(cfg), "decay_start": 500})  # a cooldown branch from step 500 to 600
    assert [lr_at(s, cooled, 600) for s in (499, 500, 550, 600, 700)] == pytest.approx([1, 1, 0.55, 0.1, 0.1])


def test_a_cooldown_branch_continues_the_trunk_at_its_step(shards, tmp_path):
    """The campaign's cooldown: resume the trunk's checkpoint into a new folder with the decay starting at its step;
    the branch's rate falls to near the floor, and the trunk's folder is left as it was."""
    trunk = tmp_path / "trunk"
    constant = tiny_config("optim.schedule=wsd", "optim.decay_start=1000000", "run.steps=1000000")
    fit(constant, shards, trunk, stop_after=6)
    before = (trunk / "last.pt").read_bytes()
    branch = tiny_config("optim.schedule=wsd", "optim.decay_start=6", "run.steps=10")
    fit(branch, shards, tmp_path / "cool", resume=trunk / "last.pt")
    rows = [json.loads(line) for line in (tmp_path / "cool" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if "lr" in row]
    assert load(tmp_path / "cool" / "last.pt")["step"] == 10 and (trunk / "last.pt").read_bytes() == before
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(lr_at(9, branch.optim, 10))
    assert lrs[-1] < 0.5 * branch.optim.lr


def test_a_log_file_gets_one_plain_line_per_log_step(shards, tmp_path):
    """With stderr a file (not a terminal) the trainer writes no progress-bar redraws: a line per log step."""
    log = tmp_path / "train.log"
    command = [sys.executable, str(ROOT / "train" / "run.py"), "--shards", str(shards), "--out", str(tmp_path / "run")]
    sets = [arg for item in TINY for arg in ("--set", item)]
    with log.open("w") as handle:
        subprocess.run(command + sets, stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    progress = [line for line in text.splitlines() if line.startswith("train ")]
    assert "\r" not in text and "\x1b[" not in text
    assert [line.split()[1] for line in progress] == [f"{step}/12" for step in range(2, 13, 2)]
    assert all("loss=" in line and "img_s=" in line for line in progress)
