"""Ship a campaign candidate when it beats the shipped model on the validation sets (never the test sets).

The candidate and the shipped model are measured with the trainer's validation (real libjpeg degradations of the
held-out CBSD432 split, CSet14 and SunHays80); when the candidate's mean is higher it becomes `model.SHIPPED_MODEL`
(fp16 weights), its ONNX graph is exported, and `python -m release.evaluate` and `python -m release.valsets`
regenerate the results, the README block and the model card from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import model
from model.slim import slim
from release import ledger, workspace
from release.workspace import ROOT, git_commit, shown

VALSETS_LIMIT = 20  # SunHays80's first 20 photos: the campaign's bar is set on them


def mean(figures: dict[str, float]) -> float:
    return sum(figures.values()) / len(figures)


def ship_candidate(candidate: Path, cooled: dict, commit: bool) -> bool:
    """Measure, compare, and ship `candidate` (a training checkpoint) if it wins; True when shipped."""
    slimmed = candidate.with_name("candidate-fp16.pt")
    slim(candidate, slimmed, fp16=True)  # measured as it would ship
    gain = compare(slimmed, model.SHIPPED_MODEL, cooled)
    if gain <= 0:
        print(f"not shipped: the candidate trails the shipped model by {-gain:.3f} dB on the validation mean")
        return False
    print(f"shipping: +{gain:.3f} dB on the validation mean")
    hand_over(slimmed, model.SHIPPED_MODEL)
    if commit:
        docs = ROOT / "docs" / "results"
        shipped, card = model.SHIPPED_MODEL, ledger.CARD
        paths = [shipped, shipped.with_suffix(".onnx"), ledger.LEDGER, ledger.LEDGER.with_name("ledger.png"), card]
        paths += [ROOT / "README.md", ROOT / "docs" / "results.md", docs / "results.json", docs / "valsets.json"]
        paths += [docs / "strength.png"]
        paths += [docs / "crops"]
        git_commit(paths, f"Ship the campaign's phase {cooled['phase']} model: +{gain:.2f} dB on validation")
    return True


def compare(candidate: Path, shipped: Path, cooled: dict) -> float:
    """Both models on the validation sets; the record goes into the ledger. Returns the candidate's gain in dB."""
    ours = ledger.measure(str(candidate), workspace.CBSD432_SHARDS, workspace.CONFIG)
    theirs = ledger.measure(str(shipped), workspace.CBSD432_SHARDS, workspace.CONFIG)
    for name in ours:
        print(f"{name:>14}: shipped {theirs[name]:.3f}  candidate {ours[name]:.3f}  ({ours[name] - theirs[name]:+.3f})")
    gain = mean(ours) - mean(theirs)
    record = {key: cooled[key] for key in ("phase", "from_step", "steps", "checkpoint") if key in cooled}
    record |= {"candidate": ours, "shipped": theirs, "gain_db": round(gain, 4), "shipped_it": gain > 0}
    ledger.render_all(lambda book: book.setdefault("candidates", []).append(record))
    return gain


def hand_over(slimmed: Path, shipped: Path) -> None:
    """The candidate becomes the shipped model: its weights, its ONNX graph, the regenerated results."""
    slimmed.replace(shipped)
    onnx = shipped.with_suffix(".onnx")
    run([sys.executable, "-m", "export", "onnx", "--model", shown(shipped), "--out", shown(onnx)])
    run([sys.executable, "-m", "release.evaluate", "--model", shown(shipped)])
    reference = ROOT / "weights" / "nafnet16-cbsd432.pt"
    valsets = ["--models", shown(reference), shown(shipped), "--labels", "phase1", "shipped"]
    run([sys.executable, "-m", "release.valsets", *valsets, "--sunhays-limit", str(VALSETS_LIMIT)])


def run(command: list[str]) -> None:
    """One thread: the trunk trains on the other core, and a 2-thread process sharing a core with it measured 10x
    slower (its threads wait on each other at every op) than a 1-thread one."""
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
