"""Training as a hostile user runs it: two trainers on one run folder, config mistakes, missing and cut val shards,
damaged manifests, a damaged last.pt with --resume auto, and the run's last line. Each is one clear line and the
documented exit status (1, 130 for Ctrl+C), and nothing written before is lost."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, one_error_line

from pipeline.command import run_command
from train.checkpoint import load
from train.run import main as train_main


def trainer(shards: Path, out: Path, *sets: str, resume: bool = True) -> list[str]:
    args = ["train/run.py", "--shards", str(shards), "--out", str(out)] + (["--resume", "auto"] if resume else [])
    return [sys.executable, *args, *[a for item in [*TINY, *sets] for a in ("--set", item)]]


def test_a_second_trainer_on_one_run_folder_is_refused_naming_the_first(shards, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        trainer(shards, run_dir, "run.steps=100000", "run.ckpt_every=1000"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        config = (run_dir / "config.yaml").read_text()
        second = subprocess.run(
            trainer(shards, run_dir, "run.steps=40", "optim.lr=0.005"), cwd=ROOT, capture_output=True, text=True
        )
        assert second.returncode == 1, second.stderr
        one_error_line(second.stderr, f"in use by another training (PID {first.pid})", "choose another --out")
        assert (run_dir / "config.yaml").read_text() == config, "the refused run wrote into the folder"
    finally:
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err  # Ctrl+C: a checkpoint, then 130, not 0
    assert "stopped by signal 2" in err and "--resume auto" in err
    assert "done:" not in out and "best.pt" not in out + err  # no validation ran: best.pt was never written
    assert load(run_dir / "last.pt")["step"] >= 1


def tiny_run(shards: Path, run_dir: Path, *sets: str) -> int:
    argv = ["--shards", str(shards), "--out", str(run_dir), "--resume", "auto"]
    return run_command(train_main, "train", argv + [a for item in [*TINY, *sets] for a in ("--set", item)])


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("loader.batch_size=four", "config 'loader.batch_size' must be int"),
        ("run.steps=0", "run.steps must be >= 1"),
        ("loader.batch_size=0", "must all be >= 1"),
        ("loader.patch_size=4096", "smaller than loader.patch_size=4096"),
        ("val.crop=[1", "not valid YAML"),
    ],
)
def test_config_mistakes_are_one_line(shards, tmp_path, capsys, setting, words):
    assert tiny_run(shards, tmp_path / "run", setting) == 1
    one_error_line(capsys.readouterr().err, "train: error:", words)


def test_a_missing_val_shard_is_named_and_training_goes_on(shards, tmp_path, capsys):
    folder = shutil.copytree(shards, tmp_path / "shards")
    val = sorted(folder.glob("val-*.tar"))
    assert len(val) >= 2, "the fixture packs two val shards"
    val[-1].unlink()
    assert tiny_run(folder, tmp_path / "run", "run.steps=6", "run.val_every=6") == 0
    err = capsys.readouterr().err
    assert f"val shard {val[-1].name} cannot be read" in err and "left out" in err
    for shard in val[:-1]:
        shard.write_bytes(shard.read_bytes()[:700])  # every val shard cut short: a clear stop
    assert tiny_run(folder, tmp_path / "run2", "run.steps=6") == 1
    one_error_line(capsys.readouterr().err, "no readable 'val' image", "python -m shards.verify")


@pytest.mark.parametrize("manifest", ["", "{not json", '["a list"]'])
def test_a_damaged_manifest_is_one_line(shards, tmp_path, capsys, manifest):
    folder = shutil.copytree(shards, tmp_path / "shards")
    (folder / "manifest.json").write_text(manifest)
    assert tiny_run(folder, tmp_path / "run") == 1
    one_error_line(capsys.readouterr().err, "manifest.json", "python -m shards.pack")


def test_resume_auto_falls_back_to_the_previous_checkpoint(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert tiny_run(shards, run_dir, "run.steps=6", "run.ckpt_every=3") == 0
    previous = load(run_dir / "last.prev.pt")["step"]
    assert previous == 3 and load(run_dir / "last.pt")["step"] == 6
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    capsys.readouterr()
    assert tiny_run(shards, run_dir, "run.steps=9") == 0
    err = capsys.readouterr().err
    assert "resuming from the one before it" in err and "last.prev.pt (step 3)" in err, err
    assert load(run_dir / "last.pt")["step"] == 9
    assert (run_dir / "last.damaged.pt").read_bytes() == data[: len(data) // 2]  # set aside, not deleted


def test_the_last_line_names_only_what_the_run_folder_holds(shards, tmp_path, capsys):
    assert tiny_run(shards, tmp_path / "run", "run.steps=2") == 0
    (tmp_path / "run" / "best.pt").unlink()
    shutil.rmtree(tmp_path / "run" / "samples")
    capsys.readouterr()
    assert tiny_run(shards, tmp_path / "run", "run.steps=2") == 0  # nothing to do: already at step 2
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")][-1]
    assert "last.pt" in done and "best.pt" not in done and "samples/" not in done, done
