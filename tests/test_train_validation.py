"""The trainer's precision choice (detected, not assumed) and its validation on folder sets beside the val split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, natural_image
from PIL import Image

from shards.pack import pack
from train import precision
from train.config import default_config, load_config
from train.loop import fit


def cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(line for line in text.splitlines() if line.startswith("flags"))
    return set(line.split(":", 1)[1].split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_native_bf16_detection_agrees_with_the_cpu_flags():
    flags = cpuinfo_flags()
    assert precision.cpu_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_auto_precision_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    assert precision.amp_dtype("auto", cpu) is None
    assert default_config("cpu").run.channels_last is False
    assert "no native bf16" in precision.describe(None, cpu, False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    assert precision.amp_dtype("auto", cpu) is torch.bfloat16
    assert default_config("cpu").run.channels_last is True
    assert precision.amp_dtype("off", cpu) is None and precision.amp_dtype("bf16", cpu) is torch.bfloat16
    assert precision.amp_dtype("auto", torch.device("mps")) is None
    with pytest.raises(ValueError, match="run.amp"):
        precision.amp_dtype("fp8", cpu)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("valsets")
    src, photos = root / "src", root / "photos"
    src.mkdir()
    photos.mkdir()
    for i in range(8):
        Image.fromarray(natural_image(64, 72, seed=300 + i)).save(src / f"{i}.png")
    for i in range(3):
        Image.fromarray(natural_image(56 + 8 * i, 60, seed=400 + i)).convert("L" if i == 2 else "RGB").save(
            photos / f"p{i}.png"
        )
    pack(src, root / "shards", val_fraction=0.25, seed=0, min_shards=2)
    return root / "shards", photos


def test_each_validation_set_is_reported_and_best_is_chosen_on_their_mean(data, tmp_path):
    shards, photos = data
    cfg = load_config("cpu", None, TINY + ["run.steps=6", f"val.sets={{photos: {photos}}}"])
    result = fit(cfg, shards, tmp_path / "run")
    assert list(result["sets"]) == ["shards val", "photos"]
    means = [one["psnr_model"] for one in result["sets"].values()]
    assert result["psnr_select"] == pytest.approx(sum(means) / 2, abs=1e-4)
    assert result["psnr_model"] == result["sets"]["shards val"]["psnr_model"]
    assert result["sets"]["photos"]["buckets"]  # per-bucket figures for the folder set too
    assert (tmp_path / "run" / "samples" / "step_0000006_photos.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("precision fp32" in row.get("message", "") or "precision bf16" in row.get("message", "") for row in rows)
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert saved["best_psnr"] == pytest.approx(result["psnr_select"])


def test_a_missing_validation_folder_fails_at_start_naming_it(data, tmp_path):
    shards, _ = data
    cfg = load_config("cpu", None, TINY + [f"val.sets={{gone: {tmp_path / 'nowhere'}}}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fit(cfg, shards, tmp_path / "run")
