"""release.campaign end to end on tiny photos and a tiny model: start, cool, ship, stop, the next stretch continues."""

from __future__ import annotations

import filecmp
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import natural_image
from PIL import Image

import model
from model import create_model, load_model
from release import campaign, ledger, workspace

TINY_CAMPAIGN = {
    "model": {"name": "nafnet", "kwargs": {"width": 8, "enc_blocks": [1, 1], "middle_blocks": 1, "dec_blocks": [1, 1]}},
    "loader": {"batch_size": 4, "patch_size": 32, "workers": 0, "crops_per_image": 2},
    "optim": {"warmup_steps": 3, "schedule": "wsd", "decay_start": 10**9},
    "run": {"steps": 10**9, "val_every": 10**9, "ckpt_every": 3, "log_every": 2, "sanity_steps": 10**9},
    "val": {"crop": 48, "variants": 1},
    "log": {"wandb": "off"},
}


@pytest.fixture
def tiny_campaign(tmp_path, monkeypatch) -> Iterator[Path]:
    """The campaign's paths pointed at tiny photos, a tiny config, a copy of the ledger and a scratch model card."""
    sources = []
    for name, count in (("A", 8), ("B", 6)):
        folder = tmp_path / "photos" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(natural_image(64, 72, seed=300 + 10 * count + i)).save(folder / f"{i}.png")
        sources.append(folder)
    config = TINY_CAMPAIGN | {"val": TINY_CAMPAIGN["val"] | {"sets": {"A val": str(tmp_path / "a-shards")}}}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    for name, value in {
        "SOURCES": tuple(sources),
        "DOWNSCALE": [1, 1],
        "SHARDS": tmp_path / "shards",
        "CBSD432_SHARDS": tmp_path / "a-shards",
        "CONFIG": tmp_path / "campaign.yaml",
    }.items():
        monkeypatch.setattr(workspace, name, value)
    shutil.copy(ledger.LEDGER, tmp_path / "ledger.json")
    (tmp_path / "card.md").write_text(f"card\n\n{ledger.BEGIN}\n{ledger.END}\n")
    monkeypatch.setattr(ledger, "LEDGER", tmp_path / "ledger.json")
    monkeypatch.setattr(ledger, "CARD", tmp_path / "card.md")
    first = tmp_path / "first.pt"
    kwargs = TINY_CAMPAIGN["model"]["kwargs"]
    torch.save(
        {"model": create_model("nafnet", **kwargs).state_dict(), "model_name": "nafnet", "model_kwargs": kwargs}, first
    )
    monkeypatch.setattr(campaign, "FIRST_INIT", first)
    monkeypatch.setattr(campaign, "STATE", tmp_path / "state")
    monkeypatch.setattr(campaign, "TRUNK", tmp_path / "trunk.pt")
    (tmp_path / "state").mkdir()
    yield tmp_path
    for kind in ("trunk", "cool"):  # a failed test leaves no trainer behind
        state = campaign.read_state(kind)
        if state is not None and campaign.is_running(state):
            campaign.stop_process(state)


def wait_for(condition, state: dict, what: str, timeout_s: float = 180) -> None:
    """Poll `condition` while the process of `state` runs; its log in the failure when it ends first."""
    deadline = time.time() + timeout_s
    while not condition():
        log = Path(state["run"]).with_suffix(".log")
        if time.time() > deadline or not campaign.is_running(state):
            raise AssertionError(f"{what}: {'timed out' if campaign.is_running(state) else 'ended'}\n{log.read_text()}")
        time.sleep(0.2)


def trained_steps(run_dir: Path) -> int:
    rows = campaign.metrics(run_dir)
    return max((row["step"] for row in rows if "img_per_s" in row), default=0)


def test_a_stretch_trains_cools_stops_and_the_next_one_continues(tiny_campaign, capsys, monkeypatch):
    shipped_before = tiny_campaign / "shipped.pt"  # the file `ship` would replace: a copy, whatever it decides
    shutil.copy(model.SHIPPED_MODEL, shipped_before)
    monkeypatch.setattr(model, "SHIPPED_MODEL", shutil.copy(shipped_before, tiny_campaign / "shipped-live.pt"))
    phases_before = len(json.loads(ledger.LEDGER.read_text())["phases"])
    campaign.start(threads=1)
    trunk = campaign.read_state("trunk")
    assert trunk["init"] == str(campaign.FIRST_INIT) and (workspace.SHARDS / "manifest.json").is_file()
    started = lambda: (Path(trunk["run"]) / "last.pt").is_file() and trained_steps(Path(trunk["run"])) >= 6  # noqa: E731
    wait_for(started, trunk, "the trunk")
    campaign.cool(steps=4, threads=1)
    cooled = campaign.read_state("cool")
    wait_for(lambda: (Path(cooled["run"]) / "last.pt").is_file() and not campaign.is_running(cooled), cooled, "cool")
    branch = torch.load(Path(cooled["run"]) / "last.pt", map_location="cpu", weights_only=True)
    assert branch["step"] == cooled["from_step"] + 4
    campaign.status()
    assert "trunk: training" in capsys.readouterr().out
    campaign.ship(commit=False, source="trunk")  # a few steps of a tiny model against the real shipped one
    assert "not shipped" in capsys.readouterr().out and filecmp.cmp(model.SHIPPED_MODEL, shipped_before)
    record = json.loads(ledger.LEDGER.read_text())["candidates"][-1]
    assert record["phase"] == trunk["phase"] and record["steps"] == 0 and not record["shipped_it"]
    arm = Path(cooled["run"]) / "last.pt"  # any run branched from the trunk ships the same way
    campaign.ship(commit=False, source=str(arm))
    assert "not shipped" in capsys.readouterr().out and filecmp.cmp(model.SHIPPED_MODEL, shipped_before)
    record = json.loads(ledger.LEDGER.read_text())["candidates"][-1]
    assert record["from_step"] == branch["step"] and record["checkpoint"].endswith("last.pt")
    with pytest.raises(SystemExit, match="no checkpoint"):
        campaign.ship(commit=False, source=str(arm.with_name("missing.pt")))
    campaign.stop(commit=False)
    assert not campaign.is_running(trunk) and campaign.read_state("trunk") is None
    load_model(campaign.TRUNK, map_location="cpu")  # fp16 EMA weights a model loads from
    phases = json.loads(ledger.LEDGER.read_text())["phases"]
    row = phases[-1]
    assert len(phases) == phases_before + 1 and row["phase"] == trunk["phase"]
    assert row["steps"] >= 6 and row["threads"] == 1 and "wall_minutes" in row and set(row["end"]) >= {"A val"}
    assert f"| {row['phase']} | CPU, " in ledger.CARD.read_text()

    campaign.cool(steps=2, threads=1, phase=trunk["phase"])  # a branch from the stopped phase's last checkpoint
    late = campaign.read_state("cool")
    wait_for(lambda: (Path(late["run"]) / "last.pt").is_file() and not campaign.is_running(late), late, "late cool")
    stopped_at = torch.load(Path(trunk["run"]) / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert late["from_step"] == stopped_at and f"cool-{trunk['phase']}-{stopped_at}" in late["run"]
    with pytest.raises(SystemExit, match="no checkpoint of phase 99"):
        campaign.cool(steps=2, threads=1, phase=99)

    campaign.start(threads=1)  # the next stretch: a new phase, from the trunk weights, with its own seeds
    following = campaign.read_state("trunk")
    assert following["phase"] == trunk["phase"] + 1 and following["init"] == str(campaign.TRUNK)
    assert f"run.seed={following['phase']}" in following["command"]
    campaign.stop_process(following)


def test_a_second_start_is_refused_while_the_trunk_trains(tiny_campaign):
    campaign.start(threads=1)
    try:
        with pytest.raises(SystemExit, match="already training"):
            campaign.start(threads=1)
    finally:
        campaign.stop_process(campaign.read_state("trunk"))
