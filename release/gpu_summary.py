"""The verdict of `release/gpu_check.sh`: `python -m release.gpu_summary OUTDIR` -> OUTDIR/summary.md and summary.json.

Reads what the check's parts left in OUTDIR (parts.tsv: one line per part with its status, exit code, seconds and
note; env.json; the suite's degradation.json and training.json) and prints the measurements against the GPU targets:
- data-wait share <= 2% at the default training config (steady state, per loader backend);
- device degradation >= 10x the MPix/s of Pillow/libjpeg on all of this machine's cores (a process pool), at the
  default training batch and patch size (the best point of the sweep is shown too).
A target whose measurement is missing is reported as not measured, with the reason when one is known.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET_WAIT_SHARE = 0.02
TARGET_SPEEDUP = 10.0


def read_parts(out: Path) -> list[dict]:
    """parts.tsv -> [{part, status, rc, seconds, note}]."""
    path = out / "parts.tsv"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
        rows.append({"part": name, "status": status, "rc": rc, "seconds": seconds, "note": note})
    return rows


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_targets(training: dict | None) -> list[dict]:
    section = (training or {}).get("sections", {}).get("training")
    if not section or section.get("status") != "ok":
        why = (section or {}).get("error", "the training part did not produce training.json")
        return [{"target": "data-wait share <= 2%", "verdict": "not measured", "measured": why}]
    rows = []
    for run in section["runs"]:
        name = f"data-wait share <= 2% ({run['backend']} loader)"
        if run["status"] != "ok":
            rows.append({"target": name, "verdict": "not measured", "measured": run["reason"]})
            continue
        t = run["train"]
        share = t["data_wait_share"]
        rows.append(
            {
                "target": name,
                "verdict": "PASS" if share <= TARGET_WAIT_SHARE else "FAIL",
                "measured": f"{share:.2%} steady ({t['run_data_wait_share']:.2%} whole run incl. start-up), "
                f"{t['img_per_s']:.0f} img/s, loader ceiling {run['ceiling']['img_per_s']:.0f} img/s, batch "
                f"{t['loader']['batch_size']} x {t['loader']['patch_size']} px, {t['loader']['workers']} workers",
            }
        )
    return rows


def speed_target(degradation: dict | None) -> dict:
    name = f"device degradation >= {TARGET_SPEEDUP:.0f}x Pillow/libjpeg on all cores"
    section = (degradation or {}).get("sections", {}).get("degradation")
    if degradation is None or not section or section.get("status") != "ok" or not section.get("rows"):
        why = (section or {}).get("error", "the degradation part did not produce degradation.json")
        return {"target": name, "verdict": "not measured", "measured": why}
    loader = degradation["config"]["train_default"]["loader"]
    rows = section["rows"]
    at_default = [r for r in rows if r["batch"] == loader["batch_size"] and r["patch"] == loader["patch_size"]]
    best = max(rows, key=lambda r: r["speedup"] or 0.0)
    judged = at_default[0] if at_default else best
    where = "training default" if at_default else "best point (the training default was not swept)"
    return {
        "target": name,
        "verdict": "PASS" if judged["speedup"] >= TARGET_SPEEDUP else "FAIL",
        "measured": f"{judged['speedup']:.3g}x at batch {judged['batch']} x {judged['patch']} px ({where}): "
        f"{judged['device_mpix_per_s']:.4g} vs {judged['cpu_pool_mpix_per_s']:.4g} MPix/s on "
        f"{section['cpu_workers']} cores; best {best['speedup']:.3g}x at batch {best['batch']} x {best['patch']} px",
    }


def summarise(out: Path) -> dict:
    env = _load(out / "env.json") or {}
    cuda = env.get("cuda", {})
    gpus = ", ".join(g["name"] for g in cuda.get("gpus", [])) or "none"
    training, degradation = _load(out / "training.json"), _load(out / "degradation.json")
    parts = {p["part"]: p for p in read_parts(out)}
    targets = []
    for name, result, judged in (
        ("training", training, wait_targets(training)),
        ("degradation", degradation, [speed_target(degradation)]),
    ):
        if result is None and "cuda" in parts:
            judged = [t | {"measured": "CUDA is absent"} for t in judged]
        elif result is None and name in parts:
            why = f"the {name} part: {parts[name]['status']} {parts[name]['note']} (see {name}.log)".strip()
            judged = [t | {"measured": why} for t in judged]
        elif result is not None and not result["device"]["device"].startswith("cuda"):  # a CPU rehearsal
            where = result["device"]["device"]  # the targets are a GPU's
            judged = [t | {"measured": f"on {where}, not a GPU: {t['measured']}"} for t in judged]
        targets += judged
    return {
        "cuda": bool(cuda.get("available")),
        "gpus": gpus,
        "cores": env.get("cpu", {}).get("cores"),
        "torch": env.get("torch"),
        "parts": read_parts(out),
        "targets": targets,
    }


def markdown(summary: dict) -> str:
    lines = [
        f"GPU check: CUDA {'yes' if summary['cuda'] else 'no'}, GPUs: {summary['gpus']}, {summary['cores']} CPU "
        f"cores, torch {summary['torch']}",
        "",
        "| part | status | exit | seconds | note |",
        "|---|---|---:|---:|---|",
    ]
    lines += [f"| {p['part']} | {p['status']} | {p['rc']} | {p['seconds']} | {p['note']} |" for p in summary["parts"]]
    lines += ["", "| target | verdict | measured |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['verdict']} | {t['measured']} |" for t in summary["targets"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder release/gpu_check.sh wrote")
    args = parser.parse_args(argv)
    summary = summarise(args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
