"""Hostile training data and a hostile end to a run: damaged shards are skipped and counted, the run stops past
`loader.max_bad_share` with a message naming the shard and the fix (after a checkpoint) and never hangs; a run
killed with SIGKILL while writing its checkpoint resumes with `--resume auto` and leaves no temporary behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from conftest import natural_image
from PIL import Image

from pipeline.config import LoaderConfig
from pipeline.health import DataSkipLimit
from pipeline.loader import make_loader
from shards.pack import pack
from train.checkpoint import load
from train.run import main as run_main

REPO = Path(__file__).resolve().parents[1]
DAMAGED = "train-00001.tar"
# fault -> (samples lost per pass, lost at start)
FAULTS = {
    "truncated": (4, True),
    "deleted": (4, True),
    "flipped": (1, False),
    "header": (3, True),
}  # the index is read at start
TRAIN = [
    "model.name=resnet",
    "model.kwargs={width: 8, num_blocks: 2}",
    "loader.batch_size=4",
    "loader.patch_size=32",
    "loader.workers=1",
    "loader.crops_per_image=2",
    "run.log_every=1",
    "run.val_every=1000",
    "run.threads=1",
    "val.crop=48",
    "val.variants=1",
    "log.wandb=off",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_train")
    (root / "src").mkdir()
    for i in range(16):
        Image.fromarray(natural_image(64, 72, seed=300 + i)).save(root / "src" / f"{i}.png")
    pack(root / "src", root / "shards", val_fraction=0.25, seed=0, min_shards=3)  # 3 train shards of 4 samples
    return root / "shards"


def damage(shards: Path, fault: str, folder: Path) -> Path:
    """A copy of the shard folder with one train tar damaged as `fault` says."""
    shutil.copytree(shards, folder)
    tar = folder / DAMAGED
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as archive:
        members = list(archive)
    if fault == "truncated":  # an interrupted copy
        tar.write_bytes(data[: len(data) // 2])
    elif fault == "deleted":
        tar.unlink()
    elif fault == "flipped":  # image bytes flipped: the sample no longer decodes
        image = next(m for m in members if m.name.endswith(".png"))
        data[image.offset_data + 40 : image.offset_data + 2000] = bytes(
            b ^ 0xFF for b in data[image.offset_data + 40 : image.offset_data + 2000]
        )
        tar.write_bytes(bytes(data))
    elif fault == "header":  # a member header whose checksum fails: the tar seems to end there
        data[members[2].offset + 148 : members[2].offset + 156] = b"0000000\x00"
        tar.write_bytes(bytes(data))
    return folder


def config(max_bad_share: float) -> LoaderConfig:
    return LoaderConfig(
        backend="torch", patch_size=32, batch_size=4, crops_per_image=2, workers=1, max_bad_share=max_bad_share
    )


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_damaged_shard_is_skipped_counted_and_named(shards, fault, tmp_path, capfd):
    folder = damage(shards, fault, tmp_path / "shards")
    loader = make_loader(folder, "train", config(max_bad_share=0.5), torch.device("cpu"))
    try:
        batches = [next(loader) for _ in range(13)]  # (12 good samples x 2 crops) / 4 per batch: 2 passes and more
    finally:
        loader.close()
    assert all(batch.shape == (4, 3, 32, 32) for batch in batches)
    per_pass, at_start = FAULTS[fault]
    expected = per_pass if at_start else 2 * per_pass  # at start: once; while reading: once per pass
    assert loader.counter.skipped >= expected
    note = loader.skip_note()
    assert note is not None and DAMAGED in note
    assert DAMAGED in capfd.readouterr().err  # each skip is a warning naming the shard


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_past_the_share_the_loader_stops_with_the_shard_and_the_fix(shards, fault, tmp_path):
    folder = damage(shards, fault, tmp_path / "shards")
    with pytest.raises(DataSkipLimit) as caught:
        loader = make_loader(folder, "train", config(max_bad_share=0.01), torch.device("cpu"))
        try:
            for _ in range(13):
                next(loader)
        finally:
            loader.close()
    assert DAMAGED in str(caught.value) and "python -m shards.verify" in str(caught.value)


def train(shards: Path, out: Path, *sets: str, resume: bool = False) -> subprocess.Popen:
    """train/run.py as a user runs it; a resumed run takes its config from the checkpoint, plus `sets`."""
    command = [sys.executable, "train/run.py", "--shards", str(shards), "--out", str(out)]
    command += ["--resume", "auto"] if resume else []
    for item in [*sets] if resume else [*TRAIN, *sets]:
        command += ["--set", item]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_training_on_a_damaged_shard_stops_after_a_checkpoint_and_exits(shards, tmp_path):
    """Default share, one loader worker: it used to print a traceback and hang until killed."""
    folder = damage(shards, "flipped", tmp_path / "shards")
    # loader.seed=2 puts the damaged sample in the third step group (step 4): the run trains before it meets it
    process = train(folder, tmp_path / "run", "run.steps=50", "run.ckpt_every=1000", "loader.seed=2")
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 1, output
    assert "train: stopped:" in output and DAMAGED in output and "python -m shards.verify" in output, output
    assert "Traceback" not in output
    assert load(tmp_path / "run" / "last.pt")["step"] >= 1


def test_sigkill_while_writing_a_checkpoint_then_resume_auto(shards, tmp_path):
    """SIGKILL lands while `.last.pt.tmpPID` is being written (a checkpoint every step); `--resume auto` continues
    from the last complete last.pt, finishes, and removes the dead run's temporary."""
    run = tmp_path / "run"
    sets = ["run.steps=100000", "run.ckpt_every=1", "model.kwargs={width: 16, num_blocks: 2}", "loader.workers=0"]
    for _attempt in range(3):
        shutil.rmtree(run, ignore_errors=True)
        process = train(shards, run, *sets)
        killed_mid_write = False
        deadline = time.monotonic() + 180
        while process.poll() is None and time.monotonic() < deadline:
            if (
                run.is_dir()
                and (run / "last.pt").exists()
                and any(p.name.startswith(".last.pt.tmp") for p in run.iterdir())
            ):
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                killed_mid_write = any(p.name.startswith(".last.pt.tmp") for p in run.iterdir())
                break
            time.sleep(0.0005)
        if process.poll() is None:
            process.kill()
        process.communicate()
        if killed_mid_write:
            break
    print(f"killed mid-write on attempt {_attempt + 1}")
    assert killed_mid_write, "no kill landed while a checkpoint was being written"
    step = load(run / "last.pt")["step"]  # the previous checkpoint is whole
    run_main(["--shards", str(shards), "--out", str(run), "--resume", "auto", "--set", f"run.steps={step + 2}"])
    assert load(run / "last.pt")["step"] == step + 2
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


@pytest.mark.dali
def test_dali_names_the_damaged_sample_and_the_fix(shards, tmp_path):
    """DALI has no option to skip a sample it cannot decode: the run stops with the sample and the fix."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    folder = damage(shards, "flipped", tmp_path / "shards")
    cfg = config(max_bad_share=0.5)
    cfg.backend = "dali"
    loader = make_loader(folder, "train", cfg, torch.device("cpu"))
    with pytest.raises(DataSkipLimit) as caught:
        for _ in range(13):
            next(loader)
    assert DAMAGED in str(caught.value) and "python -m shards.verify" in str(caught.value)
