"""The model card's generated parts: the training ledger (release.ledger) and the val/ comparison (release.valsets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, natural_image
from PIL import Image

from release import ledger, valsets
from shards.pack import pack
from train.config import load_config
from train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "weights" / "README.md"


def block(text: str, begin: str, end: str) -> str:
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def test_the_ledger_block_is_rendered_from_the_ledger():
    phases = json.loads(ledger.LEDGER.read_text())["phases"]
    assert block(CARD.read_text(), ledger.BEGIN, ledger.END) == ledger.render_table(phases)
    assert ledger.LEDGER.with_name("ledger.png").is_file()
    assert [p["phase"] for p in phases] == sorted({p["phase"] for p in phases})


def test_the_valsets_block_is_rendered_from_its_results():
    summary = json.loads((ROOT / "docs" / "results" / "valsets.json").read_text())
    assert block(CARD.read_text(), valsets.BEGIN, valsets.END) == valsets.render(summary, summary["command"])
    assert set(summary["sets"]) == set(valsets.VAL_SETS)


def test_a_run_folder_becomes_a_ledger_phase(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        Image.fromarray(natural_image(64, 72, seed=500 + i)).save(src / f"{i}.png")
    pack(src, tmp_path / "shards", val_fraction=0.25, seed=0, min_shards=2)
    fit(load_config("cpu", None, TINY), tmp_path / "shards", tmp_path / "run")
    entry = ledger.run_entry(tmp_path / "run", phase=9, device="CPU", command="tiny")
    assert (entry["steps"], entry["batch"], entry["patch"]) == (12, 4, 32)
    assert [row["step"] for row in entry["curve"]] == [6, 12]
    assert list(entry["curve"][0]["sets"]) == ["shards val"]
    table = ledger.render_table([entry])
    assert "| 9 | CPU | 12 | 48 |" in table
    ledger.plot([entry], tmp_path / "ledger.png")
    assert Image.open(tmp_path / "ledger.png").size[0] > 100


def test_valsets_renders_a_difference_column():
    summary = {
        "models": [
            {"label": "a", "file": "a.pt", "sha256": "0" * 64},
            {"label": "b", "file": "b.pt", "sha256": "1" * 64},
        ],
        "sets": {
            "CSet14": {"images": 14, "of": 14, "cells": [{"sigma": 15.0, "psnr_input": 24.6, "a": 33.0, "b": 33.25}]}
        },
    }
    text = valsets.render(summary, "cmd")
    assert "| CSet14 (14 of 14) | 15 | 24.60 | 33.00 | 33.25 | +0.25 |" in text
    with pytest.raises(KeyError):
        valsets.render(
            {"models": summary["models"], "sets": {"x": {"images": 1, "of": 1, "cells": [{"sigma": 1}]}}}, "c"
        )
