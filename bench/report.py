"""`bench.suite`'s output: the JSON header (device, versions, config), the markdown tables, the files on disk."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.config import SuiteConfig
from train import TrainConfig, to_dict

SCHEMA = "ml-restoration/bench.suite/1"


def header(device: torch.device, settings: SuiteConfig, train_cfg: TrainConfig, shards: Path, command: str) -> dict:
    """Everything a reader needs to trust or reproduce the figures: device, versions, config, the command."""
    from bench.env import collect
    from pipeline.shard_format import read_manifest

    env = collect()
    gpu = env["cuda"]["gpus"][device.index or 0]["name"] if device.type == "cuda" else None
    train = to_dict(train_cfg)
    splits = read_manifest(shards)["splits"]
    return {
        "schema": SCHEMA,
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {
            "type": device.type,
            "name": gpu or env["cpu"]["name"],
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        },
        "versions": {
            "python": env["python"],
            "torch": env["torch"],
            "cuda_build": env["cuda"]["torch_cuda_build"],
            "pillow": f"{env['pillow']['flavour']} {env['pillow']['version']}",
            "dali": env["dali"]["version"],
            **{k: v for k, v in env["packages"].items() if k in ("numpy", "webdataset", "onnxruntime")},
        },
        "config": {
            "suite": asdict(settings),
            "shards": str(shards),
            "shard_samples": {k: v["samples"] for k, v in splits.items()},
            "train_default": {
                "model": train["model"],
                "loader": train["loader"],
                "amp": train["run"]["amp"],
                "channels_last": train["run"]["channels_last"],
            },
        },
        "environment": env,
        "sections": {},
    }


def write(result: dict, out: Path) -> None:
    """FILE.json (atomically), FILE.md, and FILE.png once there are curves or degradation rows to draw."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = result["sections"]
    scaling, degradation = _ok(sections.get("scaling")), _ok(sections.get("degradation"))
    if scaling is not None or degradation is not None:
        from bench.scaling import plot

        title = f"{result['device']['type']} ({result['device']['name']}), torch {result['versions']['torch']}"
        result.setdefault("files", {})["plot"] = str(plot(scaling, degradation, out.with_suffix(".png"), title))
    result.setdefault("files", {})["markdown"] = str(out.with_suffix(".md"))
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(out)
    out.with_suffix(".md").write_text(markdown(result) + "\n")


def _ok(section: dict | None) -> dict | None:
    return section if section is not None and section.get("status") == "ok" else None


def _generic(section: dict) -> str:
    """bench.infer's own rows as a table when it reports a list of flat dicts under "rows", else its file name."""
    rows = section.get("result", {}).get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return f"see `{section.get('file')}`"
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, dict | list)))
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """All sections as markdown, headed by the command, device and versions."""
    from bench import degradation, scaling, stall
    from bench.pipeline import markdown as stages_markdown

    device, versions = result["device"], result["versions"]
    lines = [
        f"`{result['command']}`",
        "",
        f"Device: {device['type']} ({device['name']}), {device['cpu_cores']} CPU cores, {device['torch_threads']} "
        f"torch threads, load average at start {', '.join(f'{v:.1f}' for v in device['load_average'])}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + f". {result.get('seconds', 0):.0f} s in all.",
        "",
    ]
    render = {
        "stages": lambda s: stages_markdown(s["rows"]),
        "degradation": degradation.markdown,
        "scaling": scaling.markdown,
        "training": stall.markdown,
        "infer": _generic,
    }
    for name, section in result["sections"].items():
        lines.append(f"### {name} ({section['seconds']:.0f} s)")
        lines.append("")
        if section["status"] == "ok":
            lines.append(render[name](section))
        else:
            lines.append(f"{section['status']}: {section.get('error') or section.get('reason')}")
        lines.append("")
    return "\n".join(lines)
