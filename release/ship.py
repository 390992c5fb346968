"""Ship a campaign candidate when it beats the shipped model on the validation sets (never the test sets).

The candidate and the shipped model are measured with the trainer's validation (real libjpeg degradations of the
held-out CBSD432 split, CSet14 and SunHays80); when the candidate's mean is higher it becomes `model.SHIPPED_MODEL`
(fp16 weights), its ONNX graph is exported, and `python -m release.evaluate` and `python -m release.valsets`
regenerate the results, the README block and the model card from it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model import SHIPPED_MODEL
from model.slim import slim
from release.ledger import LEDGER, measure, render_all
from release.workspace import CBSD432_SHARDS, CONFIG, ROOT, git_commit

VALSETS_LIMIT = 20  # SunHays80's first 20 photos: the campaign's bar is set on them


def mean(figures: dict[str, float]) -> float:
    return sum(figures.values()) / len(figures)


def ship_candidate(candidate: Path, cooled: dict, commit: bool) -> bool:
    """Measure, compare, and ship `candidate` (a training checkpoint) if it wins; True when shipped."""
    slimmed = candidate.with_name("candidate-fp16.pt")
    slim(candidate, slimmed, fp16=True)  # measured as it would ship
    ours = measure(str(slimmed), CBSD432_SHARDS, CONFIG)
    shipped = measure(str(SHIPPED_MODEL), CBSD432_SHARDS, CONFIG)
    for name in ours:
        delta = ours[name] - shipped[name]
        print(f"{name:>14}: shipped {shipped[name]:.3f}  candidate {ours[name]:.3f}  ({delta:+.3f})")
    gain = mean(ours) - mean(shipped)
    record = {"phase": cooled["phase"], "from_step": cooled["from_step"], "steps": cooled["steps"]}
    record |= {"candidate": ours, "shipped": shipped, "gain_db": round(gain, 4), "shipped_it": gain > 0}
    render_all(lambda ledger: ledger.setdefault("candidates", []).append(record))
    if gain <= 0:
        print(f"not shipped: the candidate trails the shipped model by {-gain:.3f} dB on the validation mean")
        return False
    print(f"shipping: +{gain:.3f} dB on the validation mean")
    slimmed.replace(SHIPPED_MODEL)
    onnx = SHIPPED_MODEL.with_suffix(".onnx")
    model = str(SHIPPED_MODEL.relative_to(ROOT))
    run([sys.executable, "-m", "export", "onnx", "--model", model, "--out", str(onnx.relative_to(ROOT))])
    run([sys.executable, "-m", "release.evaluate", "--model", model])
    reference = ROOT / "weights" / "nafnet16-cbsd432.pt"
    valsets = ["--models", str(reference.relative_to(ROOT)), model, "--labels", "phase1", "shipped"]
    run([sys.executable, "-m", "release.valsets", *valsets, "--sunhays-limit", str(VALSETS_LIMIT)])
    if commit:
        docs = ROOT / "docs" / "results"
        paths = [SHIPPED_MODEL, onnx, LEDGER, LEDGER.with_name("ledger.png"), ROOT / "weights" / "README.md"]
        paths += [ROOT / "README.md", docs / "results.json", docs / "valsets.json", docs / "strength.png"]
        paths += [docs / "crops"]
        git_commit(paths, f"Ship the campaign's phase {cooled['phase']} model: +{gain:.2f} dB on validation")
    return True


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
